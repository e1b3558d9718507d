"""`creditrelay poll|reconcile|cleanup` as cron runs them, and `serve` polling in the background."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from scripts.processes import CREDITRELAY, free_port, start, stop, wait_healthy
from tests.support.database import Database
from tests.support.fake_newapi import FakeNewApi, newapi_environment
from tests.support.receiver import add_user

pytestmark = pytest.mark.slow  # each test starts the command line or a server as processes


def environment(database: Database, api: FakeNewApi) -> dict[str, str]:
    return newapi_environment(database, api)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CREDITRELAY, *args], capture_output=True, text=True, env=os.environ | env, timeout=120, check=False
    )


def test_poll_then_reconcile_then_fix_from_the_command_line(database: Database, api: FakeNewApi) -> None:
    """poll charges; reconcile exits 0 when all agree, 1 naming user and usage when not; --fix repairs."""
    add_user(database.engine, credits=1000, key="5")
    env = environment(database, api)
    now = int(time.time())
    api.add(now - 120, token_id=5, quota=30, request_id="r1")
    polled = run(env, "poll")
    assert polled.returncode == 0, polled.stderr
    assert json.loads(polled.stdout)["charged"] == 1

    clean = run(env, "reconcile")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "OK: no discrepancies" in clean.stdout

    api.add(now - 60, token_id=5, quota=12, request_id="r2")
    dirty = run(env, "reconcile", "--json")
    assert dirty.returncode == 1
    report = json.loads(dirty.stdout)
    assert [(f["kind"], f["subject"], f["user"]) for f in report["findings"]] == [
        ("missing", "req:r2", "alice@example.com")
    ]
    fixed = run(env, "reconcile", "--fix")
    assert fixed.returncode == 0, fixed.stdout
    assert database.scalar("SELECT balance FROM users") == 1000 - 42


def test_poll_with_new_api_down_exits_non_zero_and_says_why(database: Database, api: FakeNewApi) -> None:
    """An upstream outage stops the pass with a message; nothing is half-billed."""
    api.down = True
    result = run(environment(database, api), "poll", "--attempts", "1")
    assert result.returncode == 1
    assert "502" in result.stderr


def test_cleanup_prints_what_it_deleted(database: Database, api: FakeNewApi) -> None:
    """cleanup answers with a JSON count of the logs and of the expired credit API tokens it deleted."""
    database.execute(
        "INSERT INTO credit_tokens (token, reference, expiresAt) VALUES (:t, 'sync-token:x', '2026-01-01 00:00:00')",
        t="ab" * 32,
    )
    result = run(environment(database, api), "cleanup", "--older-than-days", "7")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["deleted"], answer["tokensDeleted"]) == (0, 1)
    assert database.count("credit_tokens") == 0


def test_serve_polls_in_the_background_when_poll_interval_is_set(
    database: Database, api: FakeNewApi, tmp_path: Path
) -> None:
    """With POLL_INTERVAL, a running receiver bills upstream usage without any webhook."""
    add_user(database.engine, credits=1000, key="5")
    api.add(int(time.time()) - 30, token_id=5, quota=77, request_id="bg")
    port = free_port()
    log = tmp_path / "serve.log"
    server = start(["serve", "--port", str(port)], environment(database, api) | {"POLL_INTERVAL": "0.5"}, log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/webhooks/health", server, log)
        deadline = time.monotonic() + 30
        while database.count("usage_records") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(server)
    assert database.scalar("SELECT balance FROM users") == 1000 - 77
