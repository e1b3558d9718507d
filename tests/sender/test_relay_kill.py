"""The relay sidecar killed with SIGKILL, end to end with the real `creditrelay serve`: nothing lost, nothing twice."""

import random
import time
from pathlib import Path

import httpx
import pytest

from creditrelay.sender.events import usage_event
from scripts.processes import free_port, kill_hard, start, stop, wait_healthy
from tests.support.database import Database
from tests.support.ledger import assert_ledger_consistent
from tests.support.receiver import OPENING, add_user
from tests.support.signing import SECRET

pytestmark = pytest.mark.slow  # processes killed or many commands run: make test runs it, make test-fast does not


def post_events(relay: str, first: int, count: int) -> int:
    """POST events to the sidecar in arrays of 10; the number it answered 202 for."""
    accepted = 0
    for start_at in range(first, first + count, 10):
        batch = [
            usage_event(remote_key_id=1, model="gpt-4", credit_cost=1 + i % 7, event_id=f"evt-kill-{i}")
            for i in range(start_at, start_at + 10)
        ]
        reply = httpx.post(f"{relay}/events", json=batch, timeout=10)
        assert reply.status_code == 202, reply.text
        accepted += reply.json()["accepted"]
    return accepted


def test_relay_killed_between_accept_and_delivery_loses_nothing(database: Database, tmp_path: Path) -> None:
    """Accepted while the receiver is down, relay SIGKILLed twice (once mid-drain): every event charged once."""
    add_user(database.engine)
    receiver_port, relay_port = free_port(), free_port()
    receiver_url, relay_url = f"http://127.0.0.1:{receiver_port}", f"http://127.0.0.1:{relay_port}"
    env = {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": database.url.render_as_string(hide_password=False)}
    relay_args = [
        "relay",
        "--listen", f"127.0.0.1:{relay_port}",
        "--to", f"{receiver_url}/api/webhooks/events",
        "--outbox", f"sqlite:///{tmp_path / 'outbox.db'}",
        "--retry-schedule", ",".join(["0.2"] * 200),
    ]  # fmt: skip
    log = tmp_path / "processes.log"

    relay = start(relay_args, env, log)
    wait_healthy(f"{relay_url}/health", relay, log)
    accepted = post_events(relay_url, 0, 60)  # the receiver is not running: nothing can be delivered
    kill_hard(relay)

    receiver = start(["serve", "--port", str(receiver_port)], env, log)
    try:
        wait_healthy(f"{receiver_url}/api/webhooks/health", receiver, log)
        relay = start(relay_args, env, log)
        wait_healthy(f"{relay_url}/health", relay, log)
        accepted += post_events(relay_url, 60, 60)
        time.sleep(random.uniform(0.05, 0.3))
        kill_hard(relay)  # mid-drain: some events in flight

        relay = start(relay_args, env, log)
        wait_healthy(f"{relay_url}/health", relay, log)
        deadline = time.monotonic() + 60
        while httpx.get(f"{relay_url}/health").json()["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        health = httpx.get(f"{relay_url}/health").json()
        stop(relay)
    finally:
        stop(receiver)

    assert accepted == 120
    assert (health["pending"], health["delivered"], health["dead"]) == (0, 120, 0)
    assert database.count("usage_records") == 120
    assert database.count("webhook_logs") == 120
    spent = sum(1 + i % 7 for i in range(120))
    assert database.scalar("SELECT balance FROM users") == OPENING - spent
    assert_ledger_consistent(database)
