"""sender/credit_sync_client.py: every SDK call against the real server, and when it retries."""

import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest

from creditrelay.sender.credit_sync_client import CreditSyncClient, CreditSyncError
from scripts.processes import free_port
from tests.support.credits import TELEGRAM_ID, Credentials, add_telegram_user, register_client
from tests.support.database import Database
from tests.support.receiver import Receiver


@pytest.fixture
def sdk(receiver: Receiver, database: Database) -> CreditSyncClient:
    add_telegram_user(database.engine, credits=100)
    creds = register_client(database.engine)
    return CreditSyncClient(receiver.url, creds.api_key, creds.secret, creds.source)


def test_add_deduct_balance_records_and_batch(sdk: CreditSyncClient, database: Database) -> None:
    """The seed's five calls, with results shaped as the seed reads them."""
    added = sdk.add_credits(TELEGRAM_ID, 100, "观看视频奖励", reference="video_12345")
    assert (added.success, added.balance, added.duplicate) == (True, 200, False)
    again = sdk.add_credits(TELEGRAM_ID, 100, "观看视频奖励", reference="video_12345")
    assert (again.success, again.balance, again.duplicate) == (True, 200, True)
    bought = sdk.deduct_credits(TELEGRAM_ID, 150, "购买VIP会员", reference="order_67890")
    assert (bought.success, bought.balance) == (True, 50)
    refused = sdk.deduct_credits(TELEGRAM_ID, 500, "too expensive", reference="order_2")
    assert (refused.success, refused.status_code, refused.balance) == (False, 402, 50)

    assert sdk.get_balance(TELEGRAM_ID) == {"telegram_id": TELEGRAM_ID, "credits": 50, "nickname": "Li Lei"}
    assert sdk.get_balance(987654) is None
    records = sdk.get_records(TELEGRAM_ID, limit=2)
    assert records is not None
    assert [(r["change"], r["reason"]) for r in records["records"]] == [(-150, "购买VIP会员"), (100, "观看视频奖励")]

    add_telegram_user(database.engine, 789012, name="winner")
    winners = [
        {"telegram_id": TELEGRAM_ID, "amount": 1000, "reason": "活动第1名", "reference": "event-1-first"},
        {"telegram_id": 789012, "amount": 500, "reason": "活动第2名", "reference": "event-1-second"},
        {"telegram_id": 345678, "amount": 200, "reason": "活动第3名", "reference": "event-1-third"},
    ]
    result = sdk.batch_sync(winners)
    assert result.data is not None
    assert (result.success, result.data["success"], result.data["failed"]) == (True, 2, 1)
    assert sdk.get_balance(789012) == {"telegram_id": 789012, "credits": 500, "nickname": "winner"}


def test_amounts_must_be_positive(sdk: CreditSyncClient) -> None:
    """add_credits and deduct_credits take the size of the change; the sign is theirs."""
    with pytest.raises(ValueError, match="positive"):
        sdk.add_credits(TELEGRAM_ID, 0, "nothing")
    with pytest.raises(ValueError, match="positive"):
        sdk.deduct_credits(TELEGRAM_ID, -5, "negative")


def offline_client(sleeps: list[float]) -> CreditSyncClient:
    creds = Credentials("media_bot", "crk_x", "secret")
    return CreditSyncClient(f"http://127.0.0.1:{free_port()}", creds.api_key, creds.secret, creds.source,
                            retries=3, sleep=sleeps.append)  # fmt: skip


def test_requests_with_a_reference_are_retried_on_network_errors() -> None:
    """With a reference the server dedupes a retry, so the SDK retries; the answer says it failed."""
    sleeps: list[float] = []
    result = offline_client(sleeps).add_credits(TELEGRAM_ID, 10, "x", reference="ref-1")
    assert not result.success
    assert result.message.startswith("network error")
    assert len(sleeps) == 2


def test_requests_without_a_reference_are_not_retried() -> None:
    """Without a reference a retry could not be told from a second award: one try only."""
    sleeps: list[float] = []
    assert not offline_client(sleeps).add_credits(TELEGRAM_ID, 10, "x").success
    assert sleeps == []


def test_reads_retry_then_raise() -> None:
    """Balance reads are idempotent: retried, then a CreditSyncError (not a silent None)."""
    sleeps: list[float] = []
    with pytest.raises(CreditSyncError, match="network error"):
        offline_client(sleeps).get_balance(TELEGRAM_ID)
    assert len(sleeps) == 2


def test_requests_are_signed_with_v2_tokens() -> None:
    """Every signed request carries a v2 token, which signs its reference too (none: an empty one)."""
    sent: list[dict[str, Any]] = []

    def server(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.extend(body.get("items", [body]))
        return httpx.Response(200, json={"success": True, "message": "", "data": {}})

    sdk = CreditSyncClient("http://billing.test", "crk_x", "the-secret", "media_bot", clock=lambda: 1767225600.5)
    sdk.http = httpx.Client(base_url="http://billing.test", transport=httpx.MockTransport(server))
    sdk.add_credits(TELEGRAM_ID, 10, "x", reference="ref-1")
    sdk.deduct_credits(TELEGRAM_ID, 3, "y")
    sdk.batch_sync([{"telegram_id": 42, "amount": 5, "reason": "z", "reference": "ref-2"}])
    messages = [
        f"v2:{TELEGRAM_ID}:10:media_bot:1767225600:ref-1",
        f"v2:{TELEGRAM_ID}:-3:media_bot:1767225600:",
        "v2:42:5:media_bot:1767225600:ref-2",
    ]
    expected = [hmac.new(b"the-secret", m.encode(), hashlib.sha256).hexdigest() for m in messages]
    assert [body["token"] for body in sent] == expected
