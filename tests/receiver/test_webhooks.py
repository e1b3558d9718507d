"""The usage webhook against a real server, on SQLite, MariaDB and PostgreSQL."""

import asyncio
import json
import time

import httpx
import pytest

from tests.support.database import Database
from tests.support.ledger import assert_ledger_consistent
from tests.support.receiver import OPENING, Receiver, add_user
from tests.support.signing import OTHER_SECRET, encode, seed_headers, standard_headers, usage_event

SEED_PAYLOAD = (
    b'{"eventId":"test-001","eventType":"usage","timestamp":1702900800,"data":{"remoteKeyId":1,'
    b'"model":"gpt-4","promptTokens":100,"completionTokens":50,"totalTokens":150,"creditCost":15}}'
)


def post(receiver: Receiver, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return receiver.client.post(
        "/api/webhooks/events", content=body, headers=seed_headers(body) if headers is None else headers
    )


def balance(database: Database, user_id: int) -> int:
    return int(database.scalar("SELECT balance FROM users WHERE id = :id", id=user_id))


def test_seed_example_is_charged_once_and_redelivery_is_a_duplicate(receiver: Receiver, database: Database) -> None:
    """The seed's example payload costs 15 credits once; the same delivery again is a duplicate."""
    first = post(receiver, SEED_PAYLOAD)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {
        "success": True,
        "message": "Event processed successfully",
        "eventId": "test-001",
        "duplicate": False,
    }
    again = post(receiver, SEED_PAYLOAD)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert balance(database, receiver.user_id) == OPENING - 15
    assert database.count("usage_records") == 1
    assert database.rows("SELECT eventId, status, errorMsg FROM webhook_logs") == [("test-001", "processed", None)]
    assert database.rows("SELECT type, amount, balance FROM credit_transactions ORDER BY id") == [
        ("opening", OPENING, OPENING),
        ("usage", -15, OPENING - 15),
    ]
    assert_ledger_consistent(database)


def test_same_event_id_with_another_body_is_a_conflict(receiver: Receiver, database: Database) -> None:
    """A second body under a charged eventId is refused with 409 and charges nothing."""
    assert post(receiver, encode(usage_event("evt-1", cost=15))).status_code == 200
    reply = post(receiver, encode(usage_event("evt-1", cost=999)))
    assert reply.status_code == 409
    assert reply.json()["success"] is False
    assert balance(database, receiver.user_id) == OPENING - 15


def test_key_order_and_white_space_do_not_make_a_conflict(receiver: Receiver, database: Database) -> None:
    """The body is compared by its canonical JSON, so a re-serialised redelivery is a duplicate."""
    event = usage_event("evt-ws")
    assert post(receiver, encode(event)).status_code == 200
    reordered = json.dumps(dict(reversed(list(event.items()))), indent=2).encode()
    reply = post(receiver, reordered)
    assert reply.status_code == 200
    assert reply.json()["duplicate"] is True
    assert balance(database, receiver.user_id) == OPENING - 15


def test_forty_concurrent_deliveries_of_one_event_charge_once(receiver: Receiver, database: Database) -> None:
    """40 racing deliveries of one event: one charge, 39 duplicates."""
    body = encode(usage_event("evt-race", cost=7))

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=receiver.url, timeout=60) as client:
            sends = [client.post("/api/webhooks/events", content=body, headers=seed_headers(body)) for _ in range(40)]
            return await asyncio.gather(*sends)

    replies = asyncio.run(race())
    assert [r.status_code for r in replies] == [200] * 40
    assert sorted(r.json()["duplicate"] for r in replies) == [False] + [True] * 39
    assert balance(database, receiver.user_id) == OPENING - 7
    assert database.count("usage_records") == 1
    assert database.count("webhook_logs") == 1
    assert_ledger_consistent(database)


def test_four_hundred_events_from_eight_senders_leave_the_exact_balance(receiver: Receiver, database: Database) -> None:
    """400 distinct events over 8 concurrent senders and two users: opening minus the exact sum."""
    second = add_user(database.engine, "bob@example.com", credits=500, key="2")
    events = [usage_event(f"evt-{i}", cost=i % 13, key=1 + i % 2) for i in range(400)]

    async def sender(share: list[dict[str, object]]) -> list[int]:
        async with httpx.AsyncClient(base_url=receiver.url, timeout=60) as client:
            codes = []
            for event in share:
                body = encode(event)
                reply = await client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
                codes.append(reply.status_code)
            return codes

    async def all_senders() -> list[list[int]]:
        return await asyncio.gather(*(sender(events[n::8]) for n in range(8)))

    codes = [c for share in asyncio.run(all_senders()) for c in share]
    assert codes == [200] * 400
    spent_first = sum(i % 13 for i in range(400) if i % 2 == 0)
    spent_second = sum(i % 13 for i in range(400) if i % 2 == 1)
    assert balance(database, receiver.user_id) == OPENING - spent_first
    assert balance(database, second) == 500 - spent_second
    assert database.count("usage_records") == 400
    assert_ledger_consistent(database)


def test_new_event_id_for_a_charged_request_id_is_a_duplicate(receiver: Receiver, database: Database) -> None:
    """A usage re-sent under a fresh eventId is not charged again; its log row says processed."""
    assert post(receiver, encode(usage_event("evt-a", request_id="req-1"))).status_code == 200
    reply = post(receiver, encode(usage_event("evt-b", request_id="req-1")))
    assert reply.status_code == 200
    assert reply.json()["duplicate"] is True
    assert balance(database, receiver.user_id) == OPENING - 15
    assert database.rows("SELECT eventId, status FROM webhook_logs ORDER BY eventId") == [
        ("evt-a", "processed"),
        ("evt-b", "processed"),
    ]


def test_unknown_key_is_422_recorded_failed_and_processed_after_linking(receiver: Receiver, database: Database) -> None:
    """An event for an unlinked key is kept as failed; redelivered after `key link`, it is charged."""
    body = encode(usage_event("evt-orphan", key="key-77", cost=20))
    reply = post(receiver, body)
    assert reply.status_code == 422
    assert "key-77" in reply.json()["message"]
    assert database.rows("SELECT status FROM webhook_logs") == [("failed",)]
    assert "key-77" in database.scalar("SELECT errorMsg FROM webhook_logs")
    assert database.count("usage_records") == 0

    add_user(database.engine, "carol@example.com", credits=100, key="key-77")
    again = post(receiver, body)
    assert again.status_code == 200
    assert again.json()["duplicate"] is False
    assert database.rows("SELECT status, errorMsg FROM webhook_logs") == [("processed", None)]
    assert database.scalar("SELECT balance FROM users WHERE email = 'carol@example.com'") == 80


def test_other_event_types_are_recorded_as_ignored(receiver: Receiver, database: Database) -> None:
    """A non-usage event is answered 200 and logged as ignored, charging nothing."""
    body = encode({"eventId": "evt-ping", "eventType": "ping", "timestamp": 1702900800, "data": {}})
    reply = post(receiver, body)
    assert reply.status_code == 200
    assert reply.json()["ignored"] is True
    assert database.rows("SELECT status FROM webhook_logs") == [("ignored",)]
    assert balance(database, receiver.user_id) == OPENING


def test_all_configured_secrets_are_accepted(receiver: Receiver, database: Database) -> None:
    """During a rotation the second secret verifies too."""
    body = encode(usage_event("evt-rotated"))
    assert post(receiver, body, seed_headers(body, OTHER_SECRET)).status_code == 200


VALID = encode(usage_event("evt-bad"))


def _without(field: str) -> bytes:
    event = usage_event("evt-bad")
    event["data"].pop(field)
    return encode(event)


BAD_REQUESTS = [
    pytest.param(VALID, {"Content-Type": "application/json"}, 401, "Invalid webhook signature", id="no-signature"),
    pytest.param(
        VALID,
        {"Content-Type": "application/json", "X-Webhook-Signature": "0" * 64},
        401,
        "Invalid webhook signature",
        id="wrong-signature",
    ),
    pytest.param(
        VALID,
        seed_headers(encode(usage_event("evt-other"))),
        401,
        "Invalid webhook signature",
        id="signature-of-another-body",
    ),
    pytest.param(
        VALID,
        seed_headers(VALID, "not-our-secret-but-long-enough-000000"),
        401,
        "Invalid webhook signature",
        id="signed-with-unknown-secret",
    ),
    pytest.param(b"not json", None, 400, "body: not valid JSON", id="not-json"),
    pytest.param(b"[1, 2]", None, 400, "body: must be a JSON object", id="json-array"),
    pytest.param(encode({"eventType": "usage", "timestamp": 1, "data": {}}), None, 400, "eventId", id="no-event-id"),
    pytest.param(encode(usage_event("x" * 65)), None, 400, "eventId", id="event-id-too-long"),
    pytest.param(_without("creditCost"), None, 400, "data.creditCost", id="no-credit-cost"),
    pytest.param(_without("model"), None, 400, "data.model", id="no-model"),
    pytest.param(encode(usage_event("e", cost=-5)), None, 400, "data.creditCost", id="negative-cost"),
    pytest.param(
        VALID.replace(b'"creditCost":15', b'"creditCost":15.5'),
        None,
        400,
        "data.creditCost",
        id="fractional-cost",
    ),
    pytest.param(
        VALID.replace(b'"creditCost":15', b'"creditCost":"15"'),
        None,
        400,
        "data.creditCost",
        id="cost-as-string",
    ),
    pytest.param(
        VALID.replace(b'"creditCost":15', b'"creditCost":99999999999999999999'),
        None,
        400,
        "data.creditCost",
        id="cost-past-bigint",
    ),
    pytest.param(
        VALID.replace(b'"timestamp":1702900800', b'"timestamp":"soon"'),
        None,
        400,
        "timestamp",
        id="timestamp-not-integer",
    ),
    pytest.param(
        VALID,
        {"Content-Type": "text/plain", "X-Webhook-Signature": seed_headers(VALID)["X-Webhook-Signature"]},
        400,
        "Content-Type",
        id="wrong-content-type",
    ),
    pytest.param(encode(usage_event("big", padding="x" * 70_000)), None, 413, "Body larger", id="too-large"),
]


@pytest.mark.parametrize(("body", "headers", "status", "message"), BAD_REQUESTS)
def test_bad_input_is_refused_and_changes_nothing(
    receiver: Receiver,
    database: Database,
    body: bytes,
    headers: dict[str, str] | None,
    status: int,
    message: str,
) -> None:
    """Every bad input gets its status and a message naming the problem; nothing is written."""
    before = database.snapshot()
    reply = post(receiver, body, headers)
    assert reply.status_code == status
    assert reply.json()["success"] is False
    assert message in reply.json()["message"]
    assert database.snapshot() == before


def test_standard_webhooks_signed_by_the_reference_library_is_accepted(receiver: Receiver, database: Database) -> None:
    """A request signed by the spec's own Python library is charged."""
    body = encode(usage_event("evt-std"))
    reply = post(receiver, body, standard_headers(body, "evt-std"))
    assert reply.status_code == 200
    assert balance(database, receiver.user_id) == OPENING - 15


def test_standard_webhooks_ten_minutes_old_is_refused(receiver: Receiver, database: Database) -> None:
    """A Standard Webhooks signature outside the 5-minute window is refused and nothing is recorded."""
    body = encode(usage_event("evt-old"))
    before = database.snapshot()
    reply = post(receiver, body, standard_headers(body, "evt-old", at=time.time() - 600))
    assert reply.status_code == 401
    assert database.snapshot() == before
