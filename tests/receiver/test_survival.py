"""Nothing outside a batch's own work ends a writer; a dead log sink costs log lines, not requests; slow and
half-sent bodies are bounded. Against the real server, on every database."""

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from creditrelay.billing.deliveries import DeliveryOutcome
from creditrelay.receiver.app import create_app
from creditrelay.receiver.group_commit import GroupCommitter
from creditrelay.schema.wire import Event
from scripts.processes import CREDITRELAY, free_port, stop
from tests.support.database import Database
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import SECRET, encode, seed_headers, usage_event


class BrokenSink:
    """A logger whose every line fails to be written, as on a closed pipe."""

    def __getattr__(self, _name: str) -> Any:
        def write(*_args: Any, **_kwargs: Any) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        return write


def post(client: httpx.Client, event_id: str, **fields: Any) -> httpx.Response:
    body = encode(usage_event(event_id, **fields))
    return client.post("/api/webhooks/events", content=body, headers=seed_headers(body), timeout=10)


def _serve_without_logs(env: dict[str, str]) -> tuple[subprocess.Popen[bytes] | None, str]:
    """``serve`` on a free port with stdout and stderr pipes closed at once; None if it died starting."""
    port = free_port()
    server = subprocess.Popen(
        [CREDITRELAY, "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert server.stdout is not None
    assert server.stderr is not None
    server.stdout.close()
    server.stderr.close()  # every log line from now on meets EPIPE
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while server.poll() is None:
        try:
            if httpx.get(f"{url}/api/webhooks/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:  # up but never healthy fails too
            stop(server)
            raise AssertionError("serve did not come up healthy")
        time.sleep(0.1)
    return None, url


def test_serve_with_a_closed_log_pipe_answers_every_request(database: Database, tmp_path: Path) -> None:
    """`serve` whose stderr is a pipe nobody reads any more (a dead log shipper, `| head`): charges, refusals
    and health are answered as usual, at debug level too."""
    add_user(database.engine)
    env = {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": database.url.render_as_string(hide_password=False),
           "LOG_LEVEL": "debug", "PATH": "/usr/bin:/bin"}  # fmt: skip
    # A port found free can be taken by another test's process before serve binds it; serve then exits (and,
    # its stderr closed, says nothing): started again on another port, up to three times. A serve that dies
    # at every start fails the test.
    for _ in range(3):
        server, url = _serve_without_logs(env)
        if server is not None:
            break
    assert server is not None, "serve died at every start"
    try:
        with httpx.Client(base_url=url) as client:
            assert post(client, "evt-1", cost=10).json()["duplicate"] is False
            assert post(client, "evt-1", cost=10).json()["duplicate"] is True
            assert post(client, "evt-unknown", key=999).status_code == 422  # logged at info
            body = encode(usage_event("evt-forged"))
            forged = client.post("/api/webhooks/events", content=body, headers=seed_headers(body, "x" * 40))
            assert forged.status_code == 401  # logged at info
            assert post(client, "evt-2", cost=5).status_code == 200
            assert client.get("/api/webhooks/health").status_code == 200
        assert server.poll() is None
    finally:
        stop(server)
    assert database.scalar("SELECT balance FROM users") == OPENING - 15


@pytest.mark.slow
def test_serve_with_a_log_pipe_nobody_reads_keeps_answering(database: Database, tmp_path: Path) -> None:
    """`serve` whose stderr is a pipe that stopped being read (its buffer fills after a few hundred lines):
    requests are answered as usual — lines wait in a bounded queue, then are dropped — never blocked."""
    add_user(database.engine)
    port = free_port()
    env = {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": database.url.render_as_string(hide_password=False),
           "LOG_LEVEL": "debug", "PATH": "/usr/bin:/bin"}  # fmt: skip
    server = subprocess.Popen(
        [CREDITRELAY, "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, "serve died"
            try:
                if httpx.get(f"{url}/api/webhooks/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.1)
        with httpx.Client(base_url=url) as client:
            for i in range(1500):  # ~300 bytes of debug log each: far past a 64 KiB pipe buffer
                assert post(client, f"evt-{i}", cost=1, key=999 if i % 2 else 1).status_code in (200, 422)
            assert client.get("/api/webhooks/health", timeout=5).status_code == 200
    finally:
        stop(server)
        assert server.stderr is not None
        server.stderr.close()
    assert database.scalar("SELECT balance FROM users") == OPENING - 750


def test_a_writer_survives_a_failure_to_log_its_failure(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poison event whose error cannot even be logged is answered 500 alone; the writer goes on."""
    from creditrelay.receiver import group_commit

    add_user(database.engine)
    monkeypatch.setattr(group_commit, "log", BrokenSink())
    app = create_app(settings_for(database), database.engine)
    committer: GroupCommitter = app.state.webhooks.ingestor.committer
    real = committer.apply_batch

    def refuse_poison(batch: Sequence[Event]) -> list[DeliveryOutcome]:
        if any(e.event_id == "poison" for e in batch):
            raise RuntimeError("a bug that trips on this event")
        return real(batch)

    committer.apply_batch = refuse_poison
    with serving(app) as url, httpx.Client(base_url=url) as client:
        assert post(client, "poison").status_code == 500
        assert post(client, "poison").json()["success"] is False
        for i in range(3):
            assert post(client, f"after-{i}", cost=2).status_code == 200
        assert client.get("/api/webhooks/health").status_code == 200
    assert database.scalar("SELECT balance FROM users") == OPENING - 6


def test_a_stopped_writer_is_started_again(database: Database) -> None:
    """A writer task that ended anyway (here: cancelled from outside) is replaced at the next request."""
    add_user(database.engine)
    app = create_app(settings_for(database), database.engine)
    committer: GroupCommitter = app.state.webhooks.ingestor.committer
    with serving(app) as url, httpx.Client(base_url=url) as client:
        assert post(client, "first", cost=1).status_code == 200
        task = committer._tasks[0]
        task.get_loop().call_soon_threadsafe(task.cancel)
        while not task.done():
            time.sleep(0.01)
        assert client.get("/api/webhooks/health").status_code == 200
        assert post(client, "second", cost=1).status_code == 200
        assert committer._tasks[0] is not task
    assert database.scalar("SELECT balance FROM users") == OPENING - 2


def test_health_answers_503_while_no_writer_commits(database: Database) -> None:
    """A writer stuck in its batch: events wait, health says 503 after the stall time; then it recovers."""
    add_user(database.engine)
    app = create_app(settings_for(database), database.engine)
    committer: GroupCommitter = app.state.webhooks.ingestor.committer
    committer.stall_seconds = 0.3
    real = committer.apply_batch
    release = threading.Event()

    def stuck(batch: Sequence[Event]) -> list[DeliveryOutcome]:
        release.wait(20)
        return real(batch)

    committer.apply_batch = stuck
    with serving(app) as url, httpx.Client(base_url=url) as client:
        waiting = threading.Thread(target=post, args=(client, "held"), kwargs={"cost": 4})
        waiting.start()
        time.sleep(0.6)
        health = client.get("/api/webhooks/health")
        assert health.status_code == 503
        assert "writer" in health.json()["message"]
        release.set()
        waiting.join(10)
        assert client.get("/api/webhooks/health").status_code == 200
    assert database.scalar("SELECT balance FROM users") == OPENING - 4


def raw_request(port: int, head: bytes, body_part: bytes, hold: float) -> bytes:
    """Send a request's head and part of its body, wait, and return whatever came back before close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body_part)
        time.sleep(hold)
        sock.settimeout(5)
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b""


def test_a_slow_body_is_answered_408_and_a_half_body_is_not_logged_as_an_error(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    """A body that does not arrive within BODY_READ_TIMEOUT is a 408; a client that disconnects mid-body
    leaves no error behind, and the server keeps serving."""
    from structlog.testing import capture_logs

    add_user(database.engine)
    settings = settings_for(database)
    app = create_app(type(settings)(**{**settings.__dict__, "body_timeout": 0.5}), database.engine)
    body = encode(usage_event("evt-slow"))
    head = (
        b"POST /api/webhooks/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Webhook-Signature: {seed_headers(body)['X-Webhook-Signature']}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with capture_logs() as logs, serving(app) as url:
        port = int(url.rsplit(":", 1)[1])
        answer = raw_request(port, head, body[:20], hold=1.5)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"within 0.5 s" in answer
        for _ in range(5):  # half a body, then gone
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head + body[:20])
        time.sleep(0.3)
        with httpx.Client(base_url=url) as client:
            assert post(client, "evt-after", cost=3).status_code == 200
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert "Traceback" not in capsys.readouterr().err
    assert database.scalar("SELECT balance FROM users") == OPENING - 3


def test_the_poll_loop_survives_any_failed_pass() -> None:
    """A pass that raises something nobody expected (an undecodable answer) is counted; the loop goes on."""
    from creditrelay.receiver.background import poll_forever

    class FlakyPoller:
        calls = 0

        def run_once(self) -> None:
            self.calls += 1
            if self.calls < 3:
                raise httpx.DecodingError("Error -3 while decompressing data")

    poller = FlakyPoller()

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(poll_forever(poller, 0.01, stop))  # type: ignore[arg-type]
        while poller.calls < 4 and not task.done():
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(run())
    assert poller.calls >= 4


def test_the_webhook_bypass_is_explicit_no_middleware_can_be_added(database: Database) -> None:
    """The events route skips Starlette's middleware stack on purpose: adding a middleware to the app is
    refused with the reason, so none can silently miss the busiest route; the route still answers."""
    from starlette.middleware.gzip import GZipMiddleware

    add_user(database.engine)
    app = create_app(settings_for(database), database.engine)
    with pytest.raises(TypeError, match="bypasses the middleware stack"):
        app.add_middleware(GZipMiddleware)
    assert app.user_middleware == []
    with serving(app) as url, httpx.Client(base_url=url) as client:
        assert post(client, "through-the-bypass", cost=1).status_code == 200
