"""The credit API over HTTP against the real server, on SQLite, MariaDB and PostgreSQL."""

import asyncio
import time
from datetime import datetime

import httpx
import pytest
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from creditrelay.billing.credit_sync import SyncOutcome
from creditrelay.schema.credit_sync import SyncBody
from tests.support.credits import TELEGRAM_ID, Credentials, add_telegram_user, register_client, signed
from tests.support.database import Database
from tests.support.ledger import assert_ledger_consistent
from tests.support.receiver import Receiver


@pytest.fixture
def creds(receiver: Receiver, database: Database) -> Credentials:
    add_telegram_user(database.engine, credits=100)
    return register_client(database.engine)


def sync(receiver: Receiver, creds: Credentials, body: object, key: str | None = None) -> httpx.Response:
    return receiver.client.post("/api/credits/sync", json=body, headers={"X-Api-Key": key or creds.api_key})


def balance(database: Database) -> int:
    return int(database.scalar("SELECT balance FROM users WHERE telegramId = :t", t=TELEGRAM_ID))


def test_add_and_deduct_answer_the_new_balance(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """A signed add and a signed deduction each answer success with the balance after them."""
    added = sync(receiver, creds, signed(creds, 50, reference="video_1"))
    assert added.status_code == 200
    assert added.json() == {
        "success": True,
        "message": "Credits updated",
        "data": {"telegram_id": TELEGRAM_ID, "balance": 150, "change": 50, "duplicate": False},
    }
    deducted = sync(receiver, creds, signed(creds, -30, reference="order_1"))
    assert deducted.json()["data"]["balance"] == 120
    assert database.rows(
        "SELECT type, amount, source, reason FROM credit_transactions WHERE type = 'sync' ORDER BY id"
    ) == [
        ("sync", 50, "media_bot", "test"),
        ("sync", -30, "media_bot", "test"),
    ]
    assert_ledger_consistent(database)


def test_a_repeated_external_reference_is_a_duplicate(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """The same (source, external_reference) again — even freshly signed — changes nothing."""
    sync(receiver, creds, signed(creds, 50, reference="video_1"))
    again = sync(receiver, creds, signed(creds, 50, reference="video_1", at=time.time() + 1))
    assert again.status_code == 200
    assert again.json()["data"] == {"telegram_id": TELEGRAM_ID, "balance": 150, "change": 0, "duplicate": True}
    other_amount = sync(receiver, creds, signed(creds, 70, reference="video_1"))
    assert other_amount.status_code == 409
    assert balance(database) == 150


def test_a_deduction_never_overdraws(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """Deducting more than the balance is refused with 402 and changes nothing."""
    reply = sync(receiver, creds, signed(creds, -101, reference="too-much"))
    assert reply.status_code == 402
    assert reply.json()["success"] is False
    assert reply.json()["data"]["balance"] == 100
    assert balance(database) == 100
    assert database.count("credit_transactions", "reference LIKE 'sync:%'") == 0


def test_a_replayed_token_without_reference_is_refused(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """Without external_reference, the same signed body twice is applied once and then refused."""
    body = signed(creds, 10)
    assert sync(receiver, creds, body).status_code == 200
    replay = sync(receiver, creds, body)
    assert replay.status_code == 409
    assert "token" in replay.json()["message"]
    assert balance(database) == 110


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # 300 s either way is allowed; 100 s more than that, so a slow run cannot bring the future one back in
        (lambda c, b: b | {"timestamp": b["timestamp"] - 400}, "timestamp"),
        (lambda c, b: b | {"timestamp": b["timestamp"] + 400}, "timestamp"),
        (lambda c, b: b | {"amount": 1000}, "Invalid token"),
        (lambda c, b: b | {"token": "0" * 64}, "Invalid token"),
        (lambda c, b: signed(Credentials("game_bot", c.api_key, c.secret), 10), "source does not match"),
        (lambda c, b: signed(Credentials(c.source, c.api_key, "a-secret-we-never-issued"), 10), "Invalid token"),
    ],
    ids=["stale", "future", "amount-changed", "forged-token", "other-source", "wrong-secret"],
)
def test_stale_and_forged_requests_are_401(
    receiver: Receiver, database: Database, creds: Credentials, change: object, message: str
) -> None:
    """Anything not signed now by this client's secret for this client's source is refused, unchanged."""
    body = change(creds, signed(creds, 10))  # type: ignore[operator]
    reply = sync(receiver, creds, body)
    assert reply.status_code == 401
    assert message in reply.json()["message"]
    assert balance(database) == 100


def test_unknown_or_revoked_keys_are_401(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """A key nobody holds, no key, and a revoked key are all refused."""
    assert sync(receiver, creds, signed(creds, 10), key="crk_not-a-key").status_code == 401
    assert receiver.client.post("/api/credits/sync", json=signed(creds, 10)).status_code == 401
    from creditrelay.billing.clients import revoke_client
    from creditrelay.schema.database import utc
    from creditrelay.schema.transactions import run_transaction

    run_transaction(database.engine, lambda c: revoke_client(c, "media_bot", utc(time.time())))
    assert sync(receiver, creds, signed(creds, 10)).status_code == 401
    assert balance(database) == 100


def test_an_unknown_user_is_404_and_nothing_is_created(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """Syncing for a Telegram id nobody registered creates neither a user nor a transaction (only its token
    is recorded as used)."""
    before = database.snapshot()
    reply = sync(receiver, creds, signed(creds, 10, telegram_id=42))
    assert reply.status_code == 404
    assert reply.json() == {"success": False, "message": "User not registered", "data": None}
    after = database.snapshot()
    assert after["counts"].pop("credit_tokens") == before["counts"].pop("credit_tokens") + 1
    assert after == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b | {"amount": 0}, "amount"),
        (lambda b: b | {"amount": 1.5}, "amount"),
        (lambda b: b | {"amount": "10"}, "amount"),
        (lambda b: b | {"telegram_id": "123456789"}, "telegram_id"),
        (lambda b: {k: v for k, v in b.items() if k != "token"}, "token"),
        (lambda b: b | {"token": "xyz"}, "token"),
        (lambda b: b | {"external_reference": ""}, "external_reference"),
        (lambda b: b | {"amount": 2**63}, "amount"),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(
    receiver: Receiver, database: Database, creds: Credentials, change: object, field: str
) -> None:
    """Every malformed body names the field at fault and changes nothing."""
    reply = sync(receiver, creds, change(signed(creds, 10)))  # type: ignore[operator]
    assert reply.status_code == 400
    assert reply.json()["message"].startswith(field)
    assert balance(database) == 100


def test_a_batch_applies_each_item_on_its_own(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """A forged item and an unknown user fail alone; the rest apply; a repeat of the batch changes nothing."""
    add_telegram_user(database.engine, 555, credits=0, name="Han Meimei")
    items = [
        signed(creds, 30, reference="prize-1"),
        signed(creds, 20, 555, reference="prize-2"),
        signed(creds, 10, reference="prize-3") | {"token": "f" * 64},
        signed(creds, 5, 999, reference="prize-4"),
    ]
    reply = receiver.client.post("/api/credits/batch", json={"items": items}, headers={"X-Api-Key": creds.api_key})
    data = reply.json()["data"]
    assert (reply.status_code, data["success"], data["failed"]) == (200, 2, 2)
    assert [(r["index"], r["status"]) for r in data["results"]] == [(0, 200), (1, 200), (2, 401), (3, 404)]
    again = receiver.client.post("/api/credits/batch", json={"items": items}, headers={"X-Api-Key": creds.api_key})
    assert [r["data"] and r["data"]["duplicate"] for r in again.json()["data"]["results"][:2]] == [True, True]
    assert balance(database) == 130
    assert database.scalar("SELECT balance FROM users WHERE telegramId = 555") == 20


def test_a_batch_is_all_or_nothing_through_an_outage(
    receiver: Receiver, database: Database, creds: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away after the 112th of 300 items: 503 and nothing applied, so the retry of the
    same batch (items without a reference included) applies every item once, none refused as replayed."""
    from creditrelay.billing import credit_sync

    items = [signed(creds, i, reason=f"tip {i}") for i in range(1, 301)]  # no external_reference
    real = credit_sync.apply_sync
    calls = [0]

    def lost_after_112(connection: Connection, body: SyncBody, now: datetime) -> SyncOutcome:
        calls[0] += 1
        if calls[0] % 300 == 113:  # every attempt of run_transaction meets it
            raise OperationalError("UPDATE …", {}, Exception(2013, "Lost connection to MySQL server during query"))
        return real(connection, body, now)

    monkeypatch.setattr(credit_sync, "apply_sync", lost_after_112)
    reply = receiver.client.post("/api/credits/batch", json={"items": items}, headers={"X-Api-Key": creds.api_key})
    assert reply.status_code == 503
    assert balance(database) == 100
    assert database.count("credit_transactions", "type = 'sync'") == 0
    monkeypatch.setattr(credit_sync, "apply_sync", real)
    again = receiver.client.post("/api/credits/batch", json={"items": items}, headers={"X-Api-Key": creds.api_key})
    assert again.status_code == 200
    assert again.json()["data"]["success"] == 300
    assert balance(database) == 100 + sum(range(1, 301))
    assert_ledger_consistent(database)


def test_a_batch_item_past_the_bounds_fails_alone(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """An amount past MAX_AMOUNT (400) and one that would pass MAX_BALANCE (422) fail alone; the rest apply."""
    from creditrelay.schema.money import MAX_AMOUNT, MAX_BALANCE

    add_telegram_user(database.engine, 777, name="Rich")
    database.execute("UPDATE users SET balance = :b WHERE telegramId = 777", b=MAX_BALANCE - 10)
    items = [
        signed(creds, 5, reference="a"),
        signed(creds, MAX_AMOUNT + 1, reference="b"),
        signed(creds, 11, 777, reference="c"),
        signed(creds, 7, reference="d"),
    ]
    reply = receiver.client.post("/api/credits/batch", json={"items": items}, headers={"X-Api-Key": creds.api_key})
    results = reply.json()["data"]["results"]
    assert [(r["index"], r["status"]) for r in results] == [(0, 200), (1, 400), (2, 422), (3, 200)]
    assert results[1]["message"].startswith("items.1.amount:")
    assert balance(database) == 112


def test_balance_and_records_answer_newest_first(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """Balance gives credits and nickname; records list changes newest first, limited."""
    for i in range(3):
        sync(receiver, creds, signed(creds, 10 + i, reference=f"r{i}", reason=f"reward {i}"))
    headers = {"X-Api-Key": creds.api_key}
    found = receiver.client.get(f"/api/credits/balance/{TELEGRAM_ID}", headers=headers).json()
    assert found["data"] == {"telegram_id": TELEGRAM_ID, "credits": 133, "nickname": "Li Lei"}
    records = receiver.client.get(f"/api/credits/records/{TELEGRAM_ID}?limit=2", headers=headers).json()
    assert [(r["change"], r["reason"], r["balance"]) for r in records["data"]["records"]] == [
        (12, "reward 2", 133),
        (11, "reward 1", 121),
    ]
    assert receiver.client.get("/api/credits/balance/42", headers=headers).status_code == 404
    assert receiver.client.get(f"/api/credits/balance/{TELEGRAM_ID}").status_code == 401
    assert receiver.client.get("/api/credits/records/abc", headers=headers).status_code == 400


def test_twenty_simultaneous_deductions_never_overdraw(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """20 concurrent deductions of 10 against a balance of 100: exactly 10 succeed, the balance ends at 0.
    (Equal requests signed in the same second: v2 tokens, which sign their distinct references.)"""

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=receiver.url, timeout=60) as client:
            posts = [
                client.post(
                    "/api/credits/sync",
                    json=signed(creds, -10, reference=f"buy-{i}", version=2),
                    headers={"X-Api-Key": creds.api_key},
                )
                for i in range(20)
            ]
            return await asyncio.gather(*posts)

    codes = sorted(r.status_code for r in asyncio.run(race()))
    assert codes == [200] * 10 + [402] * 10
    assert balance(database) == 0
    assert_ledger_consistent(database)
