"""A signed credit API request has one effect: its token is used once, whatever the external_reference,
across /sync and /batch (receiver/credits.py, billing/credit_tokens.py)."""

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.support.credits import TELEGRAM_ID, Credentials, add_telegram_user, register_client, signed
from tests.support.database import Database
from tests.support.ledger import assert_ledger_consistent
from tests.support.receiver import Receiver


@pytest.fixture
def creds(receiver: Receiver, database: Database) -> Credentials:
    add_telegram_user(database.engine, credits=100)
    return register_client(database.engine)


def sync(receiver: Receiver, creds: Credentials, body: dict[str, Any]) -> httpx.Response:
    return receiver.client.post("/api/credits/sync", json=body, headers={"X-Api-Key": creds.api_key})


def batch(receiver: Receiver, creds: Credentials, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reply = receiver.client.post("/api/credits/batch", json={"items": items}, headers={"X-Api-Key": creds.api_key})
    assert reply.status_code == 200, reply.text
    results: list[dict[str, Any]] = reply.json()["data"]["results"]
    return results


def balance(database: Database, telegram_id: int = TELEGRAM_ID) -> int:
    return int(database.scalar("SELECT balance FROM users WHERE telegramId = :t", t=telegram_id))


def test_a_captured_sync_replayed_with_a_new_reference_is_refused(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """The token does not sign external_reference: a copy of the request naming another reference is a 409."""
    captured = signed(creds, 50, reference="video_1")
    assert sync(receiver, creds, captured).status_code == 200
    replay = sync(receiver, creds, captured | {"external_reference": "video_2"})
    assert replay.status_code == 409
    assert replay.json() == {
        "success": False,
        "message": "This token was already used: sign a new request",
        "data": None,
    }
    assert sync(receiver, creds, {k: v for k, v in captured.items() if k != "external_reference"}).status_code == 409
    assert balance(database) == 150
    assert_ledger_consistent(database)


def test_a_captured_deduction_replayed_is_refused(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """A captured deduction cannot drain the member: each copy with a new reference is refused."""
    captured = signed(creds, -30, reference="order_1")
    assert sync(receiver, creds, captured).status_code == 200
    codes = [sync(receiver, creds, captured | {"external_reference": f"order_{i}"}).status_code for i in range(2, 6)]
    assert codes == [409] * 4
    assert balance(database) == 70


def test_five_hundred_copies_in_one_batch_apply_once(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """One signed +50 copied 500 times into a batch, each copy with its own reference, adds 50 once."""
    captured = signed(creds, 50, reference="copy-0")
    results = batch(receiver, creds, [captured | {"external_reference": f"copy-{i}"} for i in range(500)])
    assert [r["status"] for r in results] == [200] + [409] * 499
    assert balance(database) == 150
    assert database.count("credit_transactions", "type = 'sync'") == 1


def test_a_token_used_by_sync_is_refused_by_batch_and_the_other_way(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """A token is used once across both endpoints, in either order."""
    first = signed(creds, 10, reference="a")
    assert sync(receiver, creds, first).status_code == 200
    assert [r["status"] for r in batch(receiver, creds, [first | {"external_reference": "b"}])] == [409]
    second = signed(creds, 20, reference="c")
    assert [r["status"] for r in batch(receiver, creds, [second])] == [200]
    assert sync(receiver, creds, second | {"external_reference": "d"}).status_code == 409
    assert balance(database) == 130


def test_the_same_request_retried_is_a_duplicate(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """A client retrying a request after a timeout (same token, same reference) is told it was applied,
    by /sync and by /batch, and nothing changes."""
    request = signed(creds, 25, reference="retry-me")
    assert sync(receiver, creds, request).status_code == 200
    again = sync(receiver, creds, request)
    assert again.status_code == 200
    assert again.json()["data"] == {"telegram_id": TELEGRAM_ID, "balance": 125, "change": 0, "duplicate": True}
    [in_batch] = batch(receiver, creds, [request])
    assert (in_batch["status"], in_batch["data"]["duplicate"]) == (200, True)
    assert balance(database) == 125


def test_a_refused_deduction_replayed_after_a_top_up_stays_refused(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """The token of a deduction refused for want of credits is used up: once the balance has room, a copy of
    that request (same reference, or another) is refused, not applied."""
    refused = signed(creds, -150, reference="vip")
    assert sync(receiver, creds, refused).status_code == 402
    assert sync(receiver, creds, signed(creds, 100, reference="top-up")).status_code == 200
    assert sync(receiver, creds, refused).status_code == 409
    assert sync(receiver, creds, refused | {"external_reference": "vip-2"}).status_code == 409
    assert [r["status"] for r in batch(receiver, creds, [refused])] == [409]
    assert balance(database) == 200


def test_a_request_for_an_unknown_member_uses_its_token(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """A 404 uses the token too: once the member exists, the same request is refused."""
    request = signed(creds, 10, telegram_id=42, reference="early")
    assert sync(receiver, creds, request).status_code == 404
    add_telegram_user(database.engine, 42, credits=0)
    assert sync(receiver, creds, request).status_code == 409
    assert balance(database, 42) == 0


def test_a_batch_refusing_an_item_still_uses_its_token(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """In a batch, a refused deduction between applied items keeps its token used; the others apply."""
    items = [signed(creds, 5, reference="x1"), signed(creds, -500, reference="x2"), signed(creds, 7, reference="x3")]
    assert [r["status"] for r in batch(receiver, creds, items)] == [200, 402, 200]
    assert sync(receiver, creds, signed(creds, 1000, reference="rich")).status_code == 200
    assert [r["status"] for r in batch(receiver, creds, [items[1]])] == [409]
    assert balance(database) == 1112


def test_two_equal_credits_in_one_second_need_v2_tokens(
    receiver: Receiver, database: Database, creds: Credentials
) -> None:
    """Two equal credits signed in the same second: with v1 both have one token, so the second is refused;
    with v2 and distinct references both apply."""
    now = time.time()
    assert sync(receiver, creds, signed(creds, 10, reference="v1-a", at=now)).status_code == 200
    assert sync(receiver, creds, signed(creds, 10, reference="v1-b", at=now)).status_code == 409
    assert sync(receiver, creds, signed(creds, 10, reference="v2-a", at=now, version=2)).status_code == 200
    assert sync(receiver, creds, signed(creds, 10, reference="v2-b", at=now, version=2)).status_code == 200
    assert balance(database) == 130


def test_a_v2_token_signs_the_reference(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """A v2 token is accepted, and refused (401, nothing used up) once the reference it signs is changed."""
    request = signed(creds, 40, reference="signed-ref", version=2)
    assert sync(receiver, creds, request | {"external_reference": "other-ref"}).status_code == 401
    assert sync(receiver, creds, {k: v for k, v in request.items() if k != "external_reference"}).status_code == 401
    assert sync(receiver, creds, request).status_code == 200
    assert sync(receiver, creds, signed(creds, 3, version=2)).status_code == 200  # v2 without a reference
    assert balance(database) == 143


def test_copies_racing_each_other_apply_once(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """Twenty copies of one deduction sent at once, each with its own reference: exactly one applies."""
    captured = signed(creds, -10, reference="race-0")

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=receiver.url, timeout=60) as client:
            posts = [
                client.post(
                    "/api/credits/sync",
                    json=captured | {"external_reference": f"race-{i}"},
                    headers={"X-Api-Key": creds.api_key},
                )
                for i in range(20)
            ]
            return await asyncio.gather(*posts)

    assert sorted(r.status_code for r in asyncio.run(race())) == [200] + [409] * 19
    assert balance(database) == 90
    assert_ledger_consistent(database)
