"""The credit API's holds through the SDK against the real server, on every database: hold, capture at
most the held amount once (the rest released), void, refusals by name, and tokens used once."""

import time

import httpx
import pytest

from creditrelay.schema.credit_holds import hold_token, void_token
from creditrelay.sender.credit_sync_client import CreditSyncClient, by_email, by_user_id
from tests.support.credits import TELEGRAM_ID, Credentials, add_telegram_user, register_client
from tests.support.database import Database
from tests.support.receiver import Receiver


@pytest.fixture
def creds(receiver: Receiver, database: Database) -> Credentials:
    add_telegram_user(database.engine, credits=100)  # its email: f"tg{TELEGRAM_ID}@example.com"
    return register_client(database.engine)


@pytest.fixture
def sdk(receiver: Receiver, creds: Credentials) -> CreditSyncClient:
    return CreditSyncClient(receiver.url, creds.api_key, creds.secret, creds.source)


def balance(sdk: CreditSyncClient) -> int:
    found = sdk.get_balance(TELEGRAM_ID)
    assert found is not None
    return int(found["credits"])


def test_hold_capture_releases_the_rest_once(sdk: CreditSyncClient, database: Database) -> None:
    held = sdk.hold(TELEGRAM_ID, 80, "job-1", ttl=120)
    assert (held.success, held.status_code) == (True, 201)
    assert held.data is not None
    hold_id = held.data["hold_id"]
    assert (held.data["available"], held.data["state"]) == (20, "open")
    assert sdk.hold(TELEGRAM_ID, 80, "job-1", ttl=120).data["hold_id"] == hold_id  # type: ignore[index]
    refused = sdk.hold(TELEGRAM_ID, 21, "job-2")
    assert (refused.success, refused.status_code, refused.data) == (False, 402, {"available": 20})
    assert sdk.capture(hold_id, 81).status_code == 400  # more than held
    captured = sdk.capture(hold_id, 65)
    assert captured.data is not None
    assert (captured.data["state"], captured.data["captured"], captured.data["released"]) == ("captured", 65, 15)
    assert balance(sdk) == 35
    again = sdk.capture(hold_id, 10)  # a second capture, newly signed: the hold is captured already
    assert (again.status_code, again.data["captured"]) == (200, 65)  # type: ignore[index]
    assert balance(sdk) == 35
    assert database.count("credit_transactions", "type = 'capture'") == 1
    late = sdk.void(hold_id)  # a hold ended is answered as it is: nothing released twice
    assert (late.status_code, late.data["state"]) == (200, "captured")  # type: ignore[index]
    assert balance(sdk) == 35


def test_a_hold_names_its_member_by_user_id_or_email_too(
    receiver: Receiver, creds: Credentials, sdk: CreditSyncClient, database: Database
) -> None:
    """As sync does: exactly one of telegram_id, user_id or email, the token signing the one sent."""
    user_id = database.scalar(f"SELECT id FROM users WHERE email = 'tg{TELEGRAM_ID}@example.com'")
    by_id = sdk.hold(by_user_id(user_id), 30, "job-by-id")
    by_mail = sdk.hold(by_email(f"tg{TELEGRAM_ID}@example.com"), 30, "job-by-email")
    assert (by_id.status_code, by_mail.status_code) == (201, 201)
    assert by_mail.data is not None
    assert by_mail.data["available"] == 40
    assert sdk.hold(by_email("nobody@example.com"), 1, "job-nobody").status_code == 404
    timestamp = int(time.time())
    token = hold_token(creds.secret, user_id, 1, creds.source, timestamp, "two", 600)
    both = {"telegram_id": TELEGRAM_ID, "user_id": user_id, "amount": 1, "source": creds.source,
            "timestamp": timestamp, "token": token, "reference": "two"}  # fmt: skip
    with httpx.Client(base_url=receiver.url, headers={"X-Api-Key": creds.api_key}) as client:
        refused = client.post("/api/credits/holds", json=both)
    assert refused.status_code == 400
    assert "exactly one of telegram_id, user_id or email" in refused.json()["message"]
    assert database.count("credit_holds") == 2


def test_void_gives_the_credits_back(sdk: CreditSyncClient) -> None:
    held = sdk.hold(TELEGRAM_ID, 100, "job-3")
    assert held.data is not None
    voided = sdk.void(held.data["hold_id"])
    assert (voided.success, voided.data["state"]) == (True, "voided")  # type: ignore[index]
    assert sdk.hold(TELEGRAM_ID, 100, "job-4").success
    assert balance(sdk) == 100


def test_a_hold_request_is_refused_by_name(receiver: Receiver, creds: Credentials, sdk: CreditSyncClient) -> None:
    assert sdk.hold(987654, 5, "nobody").status_code == 404
    held = sdk.hold(TELEGRAM_ID, 5, "job-5")
    assert held.data is not None
    hold_id = held.data["hold_id"]
    timestamp = int(time.time())
    body = {
        "source": creds.source,
        "timestamp": timestamp,
        "token": void_token(creds.secret, hold_id, creds.source, timestamp),
    }
    headers = {"X-Api-Key": creds.api_key}
    with httpx.Client(base_url=receiver.url, headers=headers) as client:
        assert client.post(f"/api/credits/holds/{hold_id + 1}/void", json=body).status_code == 401  # signs another id
        assert client.post(f"/api/credits/holds/{hold_id}/void", json=body).status_code == 200
        other = body | {"token": void_token(creds.secret, hold_id, creds.source, timestamp)}
        assert client.post(f"/api/credits/holds/{hold_id}/void", json=other).status_code == 200  # the same again
        reply = client.post("/api/credits/holds", json={"amount": 5})
        assert (reply.status_code, "source" in reply.json()["message"]) == (400, True), reply.text
        assert client.post("/api/credits/holds", json={}, headers={"X-Api-Key": "wrong"}).status_code == 401


def test_a_top_up_with_grant_terms_is_a_grant_signed_with_them(
    receiver: Receiver, creds: Credentials, sdk: CreditSyncClient, database: Database
) -> None:
    """add_credits with an expiry, a priority and a kind: a grant (v3 token); the same terms under a v2
    token, which does not sign them, are refused; an expiry already past is a 400."""
    later = int(time.time()) + 86_400
    added = sdk.add_credits(TELEGRAM_ID, 50, "welcome", reference="promo-1", expires_at=later, priority=2, kind="promo")
    assert (added.success, added.balance) == (True, 150)
    row = database.rows("SELECT kind, priority, remaining FROM credit_grants")[0]
    assert tuple(row) == ("promo", 2, 50)
    forged = sdk._signed(TELEGRAM_ID, 50, "x", "promo-2") | {"kind": "promo"}
    reply = httpx.post(f"{receiver.url}/api/credits/sync", json=forged, headers={"X-Api-Key": creds.api_key})
    assert reply.status_code == 401
    past = sdk.add_credits(TELEGRAM_ID, 5, "late", reference="promo-3", expires_at=1_000_000)
    assert (past.success, past.status_code) == (False, 400)
    deduct = sdk._signed(TELEGRAM_ID, -5, "x", "d-1") | {"priority": 1}
    reply = httpx.post(f"{receiver.url}/api/credits/sync", json=deduct, headers={"X-Api-Key": creds.api_key})
    assert (reply.status_code, "top-up" in reply.json()["message"]) == (400, True)
    first = sdk.add_credits(TELEGRAM_ID, 5, "first", reference="promo-0", priority=0)  # 0 is sent and signed
    assert (first.success, database.scalar("SELECT priority FROM credit_grants WHERE reference LIKE '%promo-0'")) == (
        True,
        0,
    )
