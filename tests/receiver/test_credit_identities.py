"""The credit API beyond Telegram, over HTTP on every database: a member named by ``user_id`` or ``email``
is credited once per reference; the token signs the identifier sent, so a token computed for another
member or another identifier is refused; exactly one identifier per request; balance and records by
either; the SDK names members the same way; the seed's own telegram_id calls are unchanged."""

import hashlib
import hmac
import time
from typing import Any

import httpx
import pytest

from credit_sync_client import CreditSyncClient, by_email, by_user_id
from tests.support.credits import TELEGRAM_ID, Credentials, add_telegram_user, register_client
from tests.support.database import Database
from tests.support.ledger import assert_ledger_consistent, make_user
from tests.support.receiver import Receiver


def signed(
    creds: Credentials, amount: int, reference: str | None = None, version: int = 2, **member: Any
) -> dict[str, Any]:
    """A sync body naming ``member`` (one identifier), its token signing ``signs`` if given, else that value."""
    signs = member.pop("signs", None)
    [(field, value)] = member.items()
    timestamp = int(time.time())
    message = f"{value if signs is None else signs}:{amount}:{creds.source}:{timestamp}"
    if version == 2:
        message = f"v2:{message}:{reference or ''}"
    body: dict[str, Any] = {
        field: value, "amount": amount, "source": creds.source, "reason": "test", "timestamp": timestamp,
        "token": hmac.new(creds.secret.encode(), message.encode(), hashlib.sha256).hexdigest(),
    }  # fmt: skip
    if reference is not None:
        body["external_reference"] = reference
    return body


@pytest.fixture
def creds(receiver: Receiver, database: Database) -> Credentials:
    make_user(database, "shop@example.com", 100)
    add_telegram_user(database.engine, credits=10)
    return register_client(database.engine)


def _ids(database: Database) -> tuple[int, int]:
    shop = int(database.scalar("SELECT id FROM users WHERE email = 'shop@example.com'"))
    return shop, int(database.scalar("SELECT id FROM users WHERE email = 'alice@example.com'"))


def _post(receiver: Receiver, creds: Credentials, body: object, path: str = "/api/credits/sync") -> httpx.Response:
    return receiver.client.post(path, json=body, headers={"X-Api-Key": creds.api_key})


@pytest.mark.parametrize("version", [1, 2])
def test_by_email_and_by_user_id_once_per_reference(
    receiver: Receiver, database: Database, creds: Credentials, version: int
) -> None:
    shop, _ = _ids(database)
    added = _post(receiver, creds, signed(creds, 50, "order-1", version, email="shop@example.com"))
    assert added.status_code == 200
    assert added.json()["data"] == {"email": "shop@example.com", "balance": 150, "change": 50, "duplicate": False}
    again = _post(receiver, creds, signed(creds, 50, "order-1", version, user_id=shop))
    assert again.json()["data"] == {"user_id": shop, "balance": 150, "change": 0, "duplicate": True}
    taken = _post(receiver, creds, signed(creds, -30, "order-2", version, user_id=shop))
    assert taken.json()["data"] == {"user_id": shop, "balance": 120, "change": -30, "duplicate": False}
    shouted = _post(receiver, creds, signed(creds, 5, "order-3", version, email="SHOP@Example.com"))
    assert shouted.json()["data"]["balance"] == 125  # the email as sent is signed; found as stored
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=shop) == 125
    assert_ledger_consistent(database)


def test_a_token_for_another_member_or_identifier_is_refused(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    shop, alice = _ids(database)
    forged = [
        signed(creds, 50, "x-1", email="shop@example.com", signs="alice@example.com"),
        signed(creds, 50, "x-2", user_id=shop, signs=alice),
        signed(creds, 50, "x-3", user_id=shop, signs="shop@example.com"),
        signed(creds, 50, "x-4", email="shop@example.com", signs=shop),
        signed(creds, 50, "x-5", email="shop@example.com", signs=TELEGRAM_ID),
    ]
    before = database.snapshot()
    for body in forged:
        answer = _post(receiver, creds, body)
        assert answer.status_code == 401, body
        assert answer.json()["success"] is False
    # a token used for one member, sent again naming another with the same reference: a replay
    used = signed(creds, 7, "y-1", email="shop@example.com")
    assert _post(receiver, creds, used).status_code == 200
    moved = used | {"email": "alice@example.com"}
    assert _post(receiver, creds, moved).status_code == 401  # the token does not sign alice
    assert database.snapshot()["balances"] != before["balances"]
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=alice) == 1000


def test_exactly_one_identifier(receiver: Receiver, creds: Credentials, database: Database) -> None:
    shop, _ = _ids(database)
    two = signed(creds, 5, "z-1", user_id=shop) | {"email": "shop@example.com"}
    none = {k: v for k, v in signed(creds, 5, "z-2", user_id=shop).items() if k != "user_id"}
    for body in (two, none):
        answer = _post(receiver, creds, body)
        assert answer.status_code == 400
        assert "exactly one of telegram_id, user_id or email" in answer.json()["message"]
    bad = signed(creds, 5, "z-3", email="not an email")
    assert _post(receiver, creds, bad).json()["message"].startswith("email:")
    unknown = _post(receiver, creds, signed(creds, 5, "z-4", email="nobody@example.com"))
    assert unknown.status_code == 404
    batch = _post(
        receiver, creds,
        {"items": [signed(creds, 1, "b-1", user_id=shop), signed(creds, 2, "b-2", telegram_id=TELEGRAM_ID),
                   signed(creds, 3, "b-3", email="shop@example.com"), two]},
        "/api/credits/batch",
    )  # fmt: skip
    assert [r["status"] for r in batch.json()["data"]["results"]] == [200, 200, 200, 400]


def test_balance_and_records_by_any_identifier(receiver: Receiver, creds: Credentials, database: Database) -> None:
    shop, _ = _ids(database)
    key = {"X-Api-Key": creds.api_key}
    _post(receiver, creds, signed(creds, 50, "r-1", email="shop@example.com"))
    by_id = receiver.client.get("/api/credits/balance", params={"user_id": shop}, headers=key).json()["data"]
    assert by_id == {"user_id": shop, "credits": 150, "nickname": None}
    by_mail = receiver.client.get("/api/credits/balance", params={"email": "shop@example.com"}, headers=key)
    assert by_mail.json()["data"]["credits"] == 150
    by_tg = receiver.client.get("/api/credits/balance", params={"telegram_id": TELEGRAM_ID}, headers=key)
    assert by_tg.json()["data"] == {"telegram_id": TELEGRAM_ID, "credits": 10, "nickname": "Li Lei"}
    records = receiver.client.get("/api/credits/records", params={"email": "shop@example.com"}, headers=key).json()
    assert [r["change"] for r in records["data"]["records"]] == [50]
    assert records["data"]["email"] == "shop@example.com"
    wrong: list[dict[str, str | int]] = [{}, {"user_id": shop, "email": "shop@example.com"}, {"user_id": "x"}]
    for params in wrong:
        assert receiver.client.get("/api/credits/balance", params=params, headers=key).status_code == 400
    assert receiver.client.get("/api/credits/balance", params={"user_id": 10**9}, headers=key).status_code == 404


def test_the_sdk_names_members_any_way(receiver: Receiver, creds: Credentials, database: Database) -> None:
    shop, _ = _ids(database)
    with CreditSyncClient(receiver.url, creds.api_key, creds.secret, creds.source) as client:
        assert client.add_credits(by_email("shop@example.com"), 20, "gift", reference="sdk-1").balance == 120
        assert client.add_credits(by_user_id(shop), 20, "gift", reference="sdk-1").duplicate
        assert client.deduct_credits(by_user_id(shop), 5, reference="sdk-2").balance == 115
        assert client.add_credits(TELEGRAM_ID, 1, reference="sdk-3").balance == 11
        assert client.get_balance(by_email("shop@example.com")) == {
            "email": "shop@example.com",
            "credits": 115,
            "nickname": None,
        }
        assert client.get_balance(by_user_id(10**9)) is None
        assert [r["change"] for r in (client.get_records(by_user_id(shop)) or {})["records"]][:2] == [-5, 20]
        result = client.batch_sync([{"email": "shop@example.com", "amount": 1, "reference": "sdk-4"},
                                    {"user_id": shop, "amount": 1, "reference": "sdk-5"}])  # fmt: skip
        assert result.data is not None
        assert result.data["success"] == 2
