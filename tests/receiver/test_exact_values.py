"""Values are stored whole and compared byte for byte on every database, amounts stay within the documented
bounds, and refusals name the field — against the real server."""

import httpx
import pytest

from creditrelay.billing.accounts import top_up
from creditrelay.billing.admin import replay
from creditrelay.billing.deliveries import DeliveryStatus
from creditrelay.schema.money import MAX_AMOUNT, MAX_BALANCE
from tests.support.credits import TELEGRAM_ID, add_telegram_user, register_client, signed
from tests.support.database import Database
from tests.support.ledger import NOW, assert_ledger_consistent, in_transaction
from tests.support.receiver import OPENING, Receiver, add_user
from tests.support.signing import encode, seed_headers, usage_event


def post(receiver: Receiver, event_id: str, **fields: object) -> httpx.Response:
    body = encode(usage_event(event_id, **fields))  # type: ignore[arg-type]
    return receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))


def test_event_ids_that_differ_in_trailing_spaces_are_two_events(receiver: Receiver, database: Database) -> None:
    """ "ts-1" and "ts-1 " are two deliveries, each charged (MySQL's PAD SPACE collations would call them equal)."""
    for event_id in ("ts-1", "ts-1 ", "ts-1  "):
        reply = post(receiver, event_id, cost=7)
        assert reply.status_code == 200, reply.text
        assert reply.json()["duplicate"] is False
    assert post(receiver, "ts-1 ", cost=7).json()["duplicate"] is True
    assert database.count("webhook_logs") == 3
    assert database.scalar("SELECT balance FROM users") == OPENING - 21
    assert_ledger_consistent(database)


def test_request_ids_that_differ_in_trailing_spaces_are_two_usages(receiver: Receiver, database: Database) -> None:
    """A usage with requestId "R1 " after "R1" is charged, on MySQL as on SQLite."""
    assert post(receiver, "e-1", cost=5, request_id="R1").json()["duplicate"] is False
    assert post(receiver, "e-2", cost=5, request_id="R1 ").json()["duplicate"] is False
    assert post(receiver, "e-3", cost=5, request_id="R1").json()["duplicate"] is True
    assert database.scalar("SELECT balance FROM users") == OPENING - 10
    assert_ledger_consistent(database)


def test_gateway_keys_that_differ_in_trailing_spaces_are_two_keys(receiver: Receiver, database: Database) -> None:
    """Key "k" is linked, key "k " is not: its usage is unbillable, not charged to k's owner."""
    add_user(database.engine, "bob@example.com", key="k")
    assert post(receiver, "e-k", key="k", cost=2).status_code == 200
    assert post(receiver, "e-k-space", key="k ", cost=2).status_code == 422


def test_a_cost_over_the_maximum_is_a_400_naming_the_field(receiver: Receiver, database: Database) -> None:
    """creditCost past MAX_AMOUNT (2^63-1 included) is refused before anything is recorded."""
    for cost in (MAX_AMOUNT + 1, 2**63 - 1):
        reply = post(receiver, f"too-much-{cost}", cost=cost)
        assert reply.status_code == 400
        assert reply.json()["message"].startswith("data.creditCost:")
    assert database.count("webhook_logs") == 0
    assert post(receiver, "at-max", cost=MAX_AMOUNT).status_code == 200


def test_a_charge_past_the_lowest_balance_is_recorded_as_failed_and_can_be_replayed(
    receiver: Receiver, database: Database
) -> None:
    """A usage that would take a balance below -MAX_BALANCE is answered 422 on every retry, recorded as
    failed with the reason, and charged by a replay once a top-up makes room."""
    database.execute("UPDATE users SET balance = :low", low=-MAX_BALANCE + 10)  # as if long overdrawn
    database.execute("UPDATE credit_transactions SET balance = :low, amount = :low", low=-MAX_BALANCE + 10)
    for _ in range(2):
        reply = post(receiver, "deep", cost=11)
        assert reply.status_code == 422
        assert "below" in reply.json()["message"]
    assert database.rows("SELECT status FROM webhook_logs") == [("failed",)]
    assert database.count("usage_records") == 0
    assert post(receiver, "fits", cost=10).status_code == 200
    assert database.scalar("SELECT balance FROM users") == -MAX_BALANCE
    in_transaction(database, lambda c: top_up(c, receiver.user_id, 100, "room", NOW))
    replayed = in_transaction(database, lambda c: replay(c, "deep", NOW))
    assert replayed is not None
    assert replayed.outcome.status is DeliveryStatus.CHARGED
    assert replayed.credits == 11
    assert database.rows("SELECT status FROM webhook_logs WHERE eventId = 'deep'") == [("processed",)]
    assert database.scalar("SELECT balance FROM users") == -MAX_BALANCE + 100 - 11
    assert_ledger_consistent(database)


def test_credit_api_amounts_and_ids_out_of_range_are_refused_by_name(receiver: Receiver, database: Database) -> None:
    """An amount past MAX_AMOUNT is a 400 naming amount; one that would take the balance past MAX_BALANCE
    a 422; telegram ids past BIGINT or in Unicode digits a 400 naming telegram_id; nothing changes."""
    add_telegram_user(database.engine, credits=100)
    creds = register_client(database.engine)
    headers = {"X-Api-Key": creds.api_key}
    too_much = receiver.client.post("/api/credits/sync", json=signed(creds, MAX_AMOUNT + 1), headers=headers)
    assert too_much.status_code == 400
    assert too_much.json()["message"].startswith("amount:")
    database.execute("UPDATE users SET balance = :b WHERE telegramId = :t", b=MAX_BALANCE - 5, t=TELEGRAM_ID)
    past = receiver.client.post("/api/credits/sync", json=signed(creds, 6, reference="r-past"), headers=headers)
    assert past.status_code == 422
    assert past.json()["message"].startswith("amount:")
    for telegram_id in ("99999999999999999999", "%C2%B2", "%D9%A1%D9%A2"):
        for what in ("balance", "records"):
            reply = receiver.client.get(f"/api/credits/{what}/{telegram_id}", headers=headers)
            assert reply.status_code == 400, (what, telegram_id, reply.text)
            assert reply.json()["message"].startswith("telegram_id:")
    for limit in ("%C2%B2", "101", "0"):
        reply = receiver.client.get(f"/api/credits/records/{TELEGRAM_ID}?limit={limit}", headers=headers)
        assert reply.status_code == 400
        assert reply.json()["message"] == "limit: must be a positive integer up to 100"
    assert database.count("credit_transactions", "reference LIKE 'sync%'") == 0


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/admin/webhook-logs?since=100000000000000000000", "since"),
        ("/api/admin/webhook-logs?until=9999-12-31T23:00:00-14:00", "until"),
        ("/api/admin/webhook-logs?since=0001-01-01T00:00:00%2B01:00", "since"),
        ("/api/admin/webhook-logs?limit=%C2%B2", "limit"),
        ("/api/admin/webhook-logs?before=%C2%B9", "before"),
        ("/api/admin/users?limit=%D9%A1", "limit"),
        ("/api/admin/users/99999999999999999999", "user_id"),
        ("/api/admin/users/%D9%A3", "user_id"),
        ("/api/admin/users/1?before=99999999999999999999", "before"),
        ("/api/admin/users?q=99999999999999999999&limit=0", "limit"),
    ],
)
def test_admin_query_parameters_out_of_range_are_400s_naming_them(database: Database, path: str, name: str) -> None:
    """Numbers past BIGINT, times that leave a datetime's range in UTC, Unicode digits: 400, never 500."""
    from creditrelay.receiver.app import create_app
    from tests.support.receiver import settings_for
    from tests.support.server import serving

    token = "admin-token-admin-token-admin-token-42"
    settings = settings_for(database)
    app = create_app(type(settings)(**{**settings.__dict__, "admin_token": token}), database.engine)
    with serving(app) as url:
        reply = httpx.get(url + path, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["message"].startswith(f"{name}:")


def test_a_search_for_a_number_past_bigint_finds_nobody(database: Database) -> None:
    """q=99999999999999999999 (no Telegram id can be that) answers an empty list, on SQLite too."""
    from creditrelay.receiver.app import create_app
    from tests.support.receiver import settings_for
    from tests.support.server import serving

    token = "admin-token-admin-token-admin-token-42"
    settings = settings_for(database)
    app = create_app(type(settings)(**{**settings.__dict__, "admin_token": token}), database.engine)
    with serving(app) as url:
        for query in ("99999999999999999999", "%C2%B2"):
            reply = httpx.get(f"{url}/api/admin/users?q={query}", headers={"Authorization": f"Bearer {token}"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["data"] == []
        page = httpx.get(f"{url}/admin/users/99999999999999999999")
        assert page.status_code in (303, 400)  # signed out: to the sign-in page; never a 500


def test_text_that_is_not_unicode_is_a_400_before_anything_is_stored(receiver: Receiver, database: Database) -> None:
    """An eventId or model holding an unpaired surrogate escape (\\ud800) cannot be stored as text: refused
    with a 400 saying so, on the webhook and the credit API alike; a real pair (an emoji) is fine."""
    for body in (
        b'{"eventId":"e\\ud800","eventType":"usage","timestamp":1,"data":{"remoteKeyId":1,"model":"m","creditCost":1}}',
        b'{"eventId":"e1","eventType":"usage","timestamp":1,"data":{"remoteKeyId":1,"model":"\\udfff","creditCost":1}}',
    ):
        reply = receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
        assert reply.status_code == 400
        assert "surrogate" in reply.json()["message"]
    emoji = (
        b'{"eventId":"e2","eventType":"usage","timestamp":1,'
        b'"data":{"remoteKeyId":1,"model":"\\ud83d\\ude00","creditCost":1}}'
    )
    assert receiver.client.post("/api/webhooks/events", content=emoji, headers=seed_headers(emoji)).status_code == 200
    assert database.rows("SELECT model FROM usage_records") == [("😀",)]
