"""POST /api/webhooks/batch: each event answered, in order, exactly as POST /api/webhooks/events answers it
alone; one refusal never fails the others; the batch itself is signed and bounded."""

import json
from typing import Any

import httpx

from creditrelay.receiver.batches import MAX_BYTES, MAX_EVENTS
from tests.support.database import Database
from tests.support.ledger import assert_ledger_consistent
from tests.support.receiver import OPENING, Receiver
from tests.support.signing import encode, seed_headers, standard_headers, usage_event


def batch(receiver: Receiver, items: list[bytes], headers: dict[str, str] | None = None) -> httpx.Response:
    body = b"[" + b",".join(items) + b"]"
    return receiver.client.post("/api/webhooks/batch", content=body, headers=headers or seed_headers(body))


def single(receiver: Receiver, body: bytes) -> tuple[int, Any]:
    answer = receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
    return answer.status_code, answer.json()


def test_a_mixed_batch_is_answered_per_event_as_single_deliveries_are(receiver: Receiver, database: Database) -> None:
    earlier = encode(usage_event("evt-earlier", cost=5))
    assert single(receiver, earlier)[0] == 200
    changed = encode(usage_event("evt-earlier", cost=6))  # the same id with another body
    fresh = encode(usage_event("evt-new", cost=7))
    unknown = encode(usage_event("evt-unknown", cost=3, key=999))
    other = encode({"eventId": "evt-ping", "eventType": "ping", "timestamp": 1702900800, "data": {}})
    malformed = b'{"eventId": "evt-bad", "eventType": "usage"}'
    items = [fresh, earlier, changed, unknown, other, malformed, fresh]
    answer = batch(receiver, items)
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r.pop("status") for r in results] == [200, 200, 409, 422, 200, 400, 200]
    assert results[0] == {
        "success": True,
        "eventId": "evt-new",
        "message": "Event processed successfully",
        "duplicate": False,
    }
    assert results[1] == {
        "success": True,
        "eventId": "evt-earlier",
        "message": "Event already processed",
        "duplicate": True,
    }
    assert results[6] == {
        "success": True,
        "eventId": "evt-new",
        "message": "Event already processed",
        "duplicate": True,
    }
    assert results[4] == {"success": True, "eventId": "evt-ping", "message": "Event type ignored", "ignored": True}
    # the refusals say what the single endpoint says, word for word
    for index, item, code in ((2, changed, 409), (3, unknown, 422), (5, malformed, 400)):
        status, alone = single(receiver, item)
        assert (status, results[index]) == (code, alone), index
    assert database.count("usage_records") == 2
    assert int(database.scalar("SELECT balance FROM users")) == OPENING - 5 - 7
    assert_ledger_consistent(database)


def test_the_batch_is_signed_either_way_and_refused_whole_when_not(receiver: Receiver, database: Database) -> None:
    items = [encode(usage_event("evt-1", cost=1)), encode(usage_event("evt-2", cost=1))]
    body = b"[" + b",".join(items) + b"]"
    assert batch(receiver, items, seed_headers(body, "x" * 40)).status_code == 401
    assert database.count("webhook_logs") == 0
    signed = standard_headers(body, "batch-1")
    answer = receiver.client.post("/api/webhooks/batch", content=body, headers=signed)
    assert [r["status"] for r in answer.json()["results"]] == [200, 200]


def test_the_batch_has_bounds(receiver: Receiver, database: Database) -> None:
    one = encode(usage_event("evt-x", cost=1))
    too_many = batch(receiver, [one] * (MAX_EVENTS + 1))
    assert (too_many.status_code, too_many.json()["message"]) == (400, f"body: at most {MAX_EVENTS} events in a batch")
    huge = b"[" + encode(usage_event("evt-y", cost=1, padding="x" * MAX_BYTES)) + b"]"
    assert receiver.client.post("/api/webhooks/batch", content=huge, headers=seed_headers(huge)).status_code == 413
    for body in (b"{}", b"[]", b"[1,", b"not json"):
        refused = receiver.client.post("/api/webhooks/batch", content=body, headers=seed_headers(body))
        assert refused.status_code == 400, body
    big_event = encode(usage_event("evt-z", cost=1, padding="y" * 70_000))
    answer = batch(receiver, [big_event, encode(usage_event("evt-ok", cost=1))])
    assert [r["status"] for r in answer.json()["results"]] == [413, 200]
    assert database.count("webhook_logs") == 1
    assert json.loads(answer.content)["success"] is True


def test_an_item_strict_json_refuses_is_refused_alone_with_the_single_endpoint_words(
    receiver: Receiver, database: Database
) -> None:
    """NaN, a repeated key, a number too long for Python: well-formed JSON text the strict reader refuses —
    that event's own 400, as alone; its batch-mates are charged."""
    good = encode(usage_event("evt-good", cost=2))
    nan = encode(usage_event("evt-nan", cost=1))[:-1] + b',"latency":NaN}'
    repeated = b'{"eventId":"evt-rep","eventId":"evt-rep2","eventType":"ping","timestamp":1}'
    long_number = encode(usage_event("evt-long", cost=1))[:-1] + b',"n":' + b"9" * 5000 + b"}"
    answer = batch(receiver, [nan, good, repeated, long_number])
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [400, 200, 400, 400]
    for index, item in ((0, nan), (2, repeated), (3, long_number)):
        status, alone = single(receiver, item)
        assert status == 400
        assert {k: v for k, v in results[index].items() if k != "status"} == alone
    assert database.count("usage_records") == 1
