"""Hostile requests against the real server: never a 500, never a charge for anything refused."""

import hashlib
import hmac

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.database import Database
from tests.support.receiver import OPENING, Receiver
from tests.support.signing import SECRET, encode, seed_headers, seed_signature, usage_event

CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "",
    "application/x-www-form-urlencoded",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=600), content_type=st.sampled_from(CONTENT_TYPES))
def test_signed_garbage_is_never_a_500_and_never_a_charge(
    receiver: Receiver, database: Database, body: bytes, content_type: str
) -> None:
    """Any validly signed body with any content type: a 2xx or a 4xx with a message; money only on 200."""
    headers = {"X-Webhook-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    if content_type:
        headers["Content-Type"] = content_type
    reply = receiver.client.post("/api/webhooks/events", content=body, headers=headers)
    assert reply.status_code in (200, 400, 409, 413, 422)
    assert reply.json()["message"]
    assert database.scalar("SELECT balance FROM users") == OPENING


def test_a_repeated_signature_header_uses_the_first(receiver: Receiver, database: Database) -> None:
    """Two X-Webhook-Signature headers: the first one decides (a valid second cannot rescue a forged first)."""
    body = encode(usage_event("evt-rep"))
    good, bad = seed_signature(body), "0" * 64
    pairs = [("Content-Type", "application/json"), ("X-Webhook-Signature", bad), ("X-Webhook-Signature", good)]
    assert receiver.client.post("/api/webhooks/events", content=body, headers=pairs).status_code == 401
    pairs = [("Content-Type", "application/json"), ("X-Webhook-Signature", good), ("X-Webhook-Signature", bad)]
    assert receiver.client.post("/api/webhooks/events", content=body, headers=pairs).status_code == 200


def test_huge_and_many_signature_headers_are_refused_quickly(receiver: Receiver, database: Database) -> None:
    """A 60 KB signature header or thousands of v1 entries are refused, not worked through."""
    body = encode(usage_event("evt-huge"))
    many = " ".join(["v1,AAAA"] * 5000)
    for headers in (
        {"X-Webhook-Signature": "a" * 60_000},
        {"webhook-id": "evt-huge", "webhook-timestamp": "1", "webhook-signature": many},
        {"webhook-id": "x" * 20_000, "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"},
    ):
        try:
            reply = receiver.client.post(
                "/api/webhooks/events", content=body, headers=headers | {"Content-Type": "application/json"}
            )
        except httpx.RemoteProtocolError:  # the HTTP server may close on an oversized header: also a refusal
            continue
        assert reply.status_code in (400, 401, 431)
    assert database.count("webhook_logs") == 0


def test_a_chunked_body_is_read_whole_and_refused_once_it_grows_past_the_limit(
    receiver: Receiver, database: Database
) -> None:
    """Without Content-Length the body arrives in pieces: a signed one in three chunks is charged, one that
    grows past the limit chunk by chunk is refused with 413 and charges nothing."""
    body = encode(usage_event("evt-chunked"))
    pieces = [body[:10], body[10:50], body[50:]]
    headers = {"Content-Type": "application/json", "X-Webhook-Signature": seed_signature(body)}
    answer = receiver.client.post("/api/webhooks/events", content=iter(pieces), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["eventId"] == "evt-chunked"

    big = encode(usage_event("evt-too-big", padding="x" * 70_000))
    chunks = [big[i : i + 8192] for i in range(0, len(big), 8192)]
    headers = {"Content-Type": "application/json", "X-Webhook-Signature": seed_signature(big)}
    answer = receiver.client.post("/api/webhooks/events", content=iter(chunks), headers=headers)
    assert answer.status_code == 413
    assert database.scalar("SELECT COUNT(*) FROM usage_records WHERE eventId = 'evt-too-big'") == 0


def test_a_nul_character_anywhere_is_a_400_naming_where_on_every_database(
    receiver: Receiver, database: Database
) -> None:
    """PostgreSQL cannot store U+0000, so no database is given one: in a webhook's fields (single or in a
    batch), a credit API body, a URL's path or query, an admin form: each a 400 saying where, nothing
    recorded or charged. A backslash followed by "u0000" is text like any other."""
    import json

    from tests.support.credits import add_telegram_user, register_client, signed

    before = database.snapshot()
    for field, event in (
        ("eventId", usage_event("evt\u0000")),
        ("data.model", usage_event("evt-m") | {"data": usage_event("e")["data"] | {"model": "g\u0000"}}),
        ("data.requestId", usage_event("evt-r", request_id="r\u0000")),
        ("data.remoteKeyId", usage_event("evt-k", key="k\u0000")),
        ("data.note", usage_event("evt-x") | {"data": usage_event("e")["data"] | {"note": "\u0000"}}),
    ):
        body = encode(event)
        assert b"\\u0000" in body
        reply = receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
        assert reply.status_code == 400, reply.text
        assert reply.json()["message"].startswith(f"{field}: a NUL character")
    assert database.snapshot() == before
    batch = b"[" + encode(usage_event("evt-b\u0000")) + b"," + encode(usage_event("evt-ok")) + b"]"
    answer = receiver.client.post("/api/webhooks/batch", content=batch, headers=seed_headers(batch))
    assert [r["status"] for r in answer.json()["results"]] == [400, 200]
    assert database.rows("SELECT eventId FROM webhook_logs") == [("evt-ok",)]
    escaped = encode(usage_event("evt-backslash") | {"data": usage_event("e")["data"] | {"model": "a\\u0000"}})
    assert b"\\\\u0000" in escaped
    ok = receiver.client.post("/api/webhooks/events", content=escaped, headers=seed_headers(escaped))
    assert ok.status_code == 200, ok.text
    assert database.scalar("SELECT model FROM usage_records WHERE eventId = 'evt-backslash'") == "a\\u0000"

    add_telegram_user(database.engine)
    creds = register_client(database.engine)
    sync = signed(creds, 5, reference="ref\u0000")
    reply = receiver.client.post(
        "/api/credits/sync", content=json.dumps(sync).encode(), headers={"X-Api-Key": creds.api_key,
                                                                         "Content-Type": "application/json"}
    )  # fmt: skip
    assert (reply.status_code, reply.json()["message"].split(":")[0]) == (400, "external_reference")
    for path in ("/api/gateway/allowance/k%00", "/api/admin/webhook-logs/e%00/replay", "/admin/logs?key=%00",
                 "/api/admin/users?q=a%00b", "/api/credits/records/1?limit=%00"):  # fmt: skip
        reply = receiver.client.request("POST" if "replay" in path else "GET", path)
        assert reply.status_code == 400, (path, reply.text)
        assert "NUL" in reply.json()["message"]
