"""The server's edges against one client without credentials: the head of a request is bounded in size and
time, connections are capped, forms are small, JSON is shallow, and what such a client causes is counted,
not logged line by line."""

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import structlog

from creditrelay.receiver import http_limits, logs
from creditrelay.receiver.app import create_app
from creditrelay.receiver.bodies import read_body
from creditrelay.receiver.errors import ApiError
from creditrelay.schema.wire import MAX_DEPTH
from creditrelay.settings import SettingsError, load_settings
from tests.support.database import Database
from tests.support.receiver import OPENING, Receiver, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event

TOKEN = "admin-token-admin-token-admin-token-42"


def raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_head_past_its_limit_is_431_and_the_server_goes_on(receiver: Receiver) -> None:
    """A 200 KB URL or header is refused as soon as it passes 16 KiB, not read whole; others are served."""
    for request in (
        b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200_000 + b"\r\n\r\n",
    ):
        with raw(receiver.url) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it was all sent
                sock.sendall(request)
            assert answer(sock).startswith(b"HTTP/1.1 431 ")
    assert receiver.client.get("/api/webhooks/health").status_code == 200


def test_a_head_past_its_limit_behind_another_request_is_431(receiver: Receiver) -> None:
    """A request pipelined behind another, its head past 16 KiB, is refused too (the parser's count)."""
    first = b"GET /api/webhooks/health HTTP/1.1\r\nHost: x\r\n\r\n"
    second = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200_000 + b"\r\n\r\n"
    with raw(receiver.url) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(first + second)
        received = answer(sock)
    assert b"HTTP/1.1 431 " in received
    assert receiver.client.get("/api/webhooks/health").status_code == 200


def test_the_rest_of_a_refused_body_is_not_taken_for_the_next_head(receiver: Receiver) -> None:
    """A body answered 413 before it was all read: what is left of it, arriving after the answer, is body,
    not a head past its limit; the next request on the connection is served."""
    head = b"POST /api/webhooks/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    body = b"[" + b"x" * 200_000 + b"]"
    with raw(receiver.url) as sock:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000])
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 413 "), first[:80]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body[1000:] + b"GET /api/webhooks/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = answer(sock)
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:80]


def test_a_head_that_does_not_arrive_in_time_is_cut_off(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that sends nothing, or a header line now and then, is answered 408 and closed once
    the head's time is up (10 s; 0.5 s here)."""
    monkeypatch.setattr(http_limits, "HEAD_TIMEOUT", 0.5)
    with raw(receiver.url) as idle, raw(receiver.url) as slow:
        slow.sendall(b"GET /api/webhooks/health HTTP/1.1\r\n")
        slow.sendall(b"X-A: 1\r\n")
        assert answer(idle).startswith(b"HTTP/1.1 408 ")
        assert answer(slow).startswith(b"HTTP/1.1 408 ")
    assert receiver.client.get("/api/webhooks/health").status_code == 200


def test_connections_past_the_cap_are_answered_503(database: Database) -> None:
    """With every connection the process takes open, a new request is answered 503, not queued."""
    add_user(database.engine)
    app = create_app(settings_for(database), database.engine)
    with serving(app, max_connections=4) as url:
        held = [raw(url) for _ in range(4)]
        try:
            time.sleep(0.2)  # the server accepts them
            reply = httpx.get(f"{url}/api/webhooks/health", timeout=5)
            assert reply.status_code == 503
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 975])
def test_json_nested_past_the_limit_is_a_400_everywhere(receiver: Receiver, database: Database, depth: int) -> None:
    """A webhook, a batch item and a credit request nested deeper than 64 levels: a 400 naming it (the
    batch's other events still charged), never a 500."""
    nested = "[" * depth + "]" * depth
    body = encode(usage_event("evt-deep")).replace(b'"data":', b'"deep":' + nested.encode() + b',"data":', 1)
    reply = receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
    assert reply.status_code == 400, reply.text
    assert "nested" in reply.json()["message"]

    good = encode(usage_event("evt-shallow", cost=5))
    batch = b"[" + body + b"," + good + b"]"
    reply = receiver.client.post("/api/webhooks/batch", content=batch, headers=seed_headers(batch))
    assert [r["status"] for r in reply.json()["results"]] == [400, 200], reply.text

    credit = b'{"telegram_id": 1, "amount": 5, "deep": ' + nested.encode() + b"}"
    reply = receiver.client.post(
        "/api/credits/sync", content=credit, headers={"Content-Type": "application/json", "X-Api-Key": "crk_x"}
    )
    assert reply.status_code in (400, 401)
    assert database.scalar("SELECT balance FROM users") == OPENING - 5


def test_a_body_in_many_pieces_is_read_whole_and_bounded() -> None:
    """A body sent in 4,096 pieces of 1 KiB is read as sent; past the limit it is a 413."""
    pieces = [bytes([i % 256]) * 1024 for i in range(4096)]

    def receive_of(limit_pieces: list[bytes]):  # type: ignore[no-untyped-def]
        messages = iter(limit_pieces)

        async def receive() -> dict[str, object]:
            piece = next(messages)
            return {"type": "http.request", "body": piece, "more_body": piece is not limit_pieces[-1]}

        return receive

    assert asyncio.run(read_body(receive_of(pieces), {}, 4 * 1024 * 1024)) == b"".join(pieces)
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_body(receive_of(pieces), {}, 1024 * 1024))
    assert refused.value.status_code == 413


@pytest.fixture
def console(database: Database) -> Iterator[str]:
    add_user(database.engine)
    settings = dataclasses.replace(settings_for(database), admin_token=TOKEN)
    with serving(create_app(settings, database.engine)) as url:
        yield url


def test_the_sign_in_form_takes_one_short_field_and_no_upload(console: str) -> None:
    """Uploads, a form past 16 KiB and a form of too many fields are refused before they are parsed; a
    wrong token is 401; ten wrong guesses a minute and the next is 429 with Retry-After."""
    login = f"{console}/admin/login"
    files = {f"f{i}": (f"f{i}.bin", b"x" * 1024) for i in range(300)}
    assert httpx.post(login, files=files).status_code == 415
    assert httpx.post(login, data={"token": "x" * 20_000}).status_code == 413
    assert httpx.post(login, data={f"f{i}": "1" for i in range(100)}).status_code == 400
    answers = [httpx.post(login, data={"token": "wrong"}).status_code for _ in range(8)]  # 3 above counted too
    assert answers[:7] == [401] * 7
    refused = httpx.post(login, data={"token": TOKEN})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1


def test_with_admin_off_every_page_says_403(database: Database) -> None:
    """No ADMIN_TOKEN: the sign-in and every page answer 403 saying so (not 401 or a redirect)."""
    app = create_app(settings_for(database), database.engine)
    with serving(app) as url:
        for method, path in (
            ("GET", "/admin/login"),
            ("POST", "/admin/login"),
            ("GET", "/admin/"),
            ("GET", "/admin/users"),
        ):
            reply = httpx.request(method, f"{url}{path}", follow_redirects=False)
            assert reply.status_code == 403, (method, path)
            assert "ADMIN_TOKEN" in reply.text


def test_metrics_ask_for_their_token_when_one_is_set(database: Database) -> None:
    """METRICS_TOKEN set: /metrics without it is 401, with it 200."""
    settings = dataclasses.replace(settings_for(database), metrics_token="m" * 32)
    with serving(create_app(settings, database.engine)) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer " + "m" * 32}).status_code == 200


def test_the_docs_page_loads_only_our_files_and_cannot_be_framed(receiver: Receiver) -> None:
    """/docs comes with a CSP that allows scripts from here only and no framing; Swagger UI's own
    index.html (which fetches petstore.swagger.io) is not served."""
    page = receiver.client.get("/docs")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text
    assert receiver.client.get("/docs/static/index.html").status_code == 404
    assert receiver.client.get("/docs/static/start.js").status_code == 200
    assert receiver.client.get("/docs/static/swagger-ui-bundle.js").status_code == 200


def test_unauthenticated_requests_are_counted_not_logged_one_by_one(receiver: Receiver) -> None:
    """100 unsigned webhooks and 100 unsigned batches: one log line, with the count, and the metric."""
    monkey = logs.Noisy("unauthenticated_requests")
    import creditrelay.receiver.errors as errors

    errors._UNAUTHENTICATED = monkey  # a fresh minute
    body = encode(usage_event("evt-unsigned"))
    with structlog.testing.capture_logs() as captured:
        for _ in range(100):
            receiver.client.post("/api/webhooks/events", content=body, headers={"Content-Type": "application/json"})
            receiver.client.post(
                "/api/webhooks/batch", content=b"[" + body + b"]", headers={"Content-Type": "application/json"}
            )
    lines = [line for line in captured if line["event"] == "unauthenticated_requests"]
    assert len(lines) == 1
    metrics = receiver.client.get("/metrics").text
    assert 'creditrelay_unauthenticated_requests_total{endpoint="/api/webhooks"}' in metrics


def test_a_credit_sync_secret_shorter_than_32_characters_is_refused() -> None:
    """CREDIT_SYNC_SECRET and METRICS_TOKEN need 32 characters, as the other secrets do."""
    for name in ("CREDIT_SYNC_SECRET", "METRICS_TOKEN"):
        with pytest.raises(SettingsError, match=name):
            load_settings({name: "short"}, env_file=None, dev_secret_file=None)
