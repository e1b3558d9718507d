"""Enforcement end to end: `creditrelay serve` instances pushing suspensions and resumptions to a fake
new-api, the `enforce` command, and the allowance a gateway can ask."""

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from creditrelay.receiver.app import create_app
from scripts.processes import CREDITRELAY, free_port, start, stop, wait_healthy
from tests.support.database import Database
from tests.support.fake_newapi import FakeNewApi, newapi_environment
from tests.support.receiver import add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event

GATEWAY_TOKEN = "gateway-token-for-the-allowance-api-000"


def environment(database: Database, api: FakeNewApi) -> dict[str, str]:
    return newapi_environment(database, api) | {"GATEWAY_ENFORCEMENT": "tokens"}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CREDITRELAY, *args], capture_output=True, text=True, env=os.environ | env, timeout=60)


def eventually(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


@pytest.mark.slow
def test_serve_instances_push_each_intent_once_and_a_change_made_while_down_at_start(
    database: Database, api: FakeNewApi, tmp_path: Path
) -> None:
    env = environment(database, api)
    api.token(17)
    assert run(env, "user", "create", "--email", "alice@example.com", "--credits", "10").returncode == 0
    assert run(env, "key", "link", "17", "--user", "alice@example.com").returncode == 0
    ports = [free_port(), free_port()]
    servers = [start(["serve", "--port", str(port)], env, tmp_path / f"serve-{port}.log") for port in ports]
    try:
        for port, server in zip(ports, servers, strict=True):
            wait_healthy(f"http://127.0.0.1:{port}/api/webhooks/health", server, tmp_path / f"serve-{port}.log")
        body = encode(usage_event("evt-1", cost=10, key=17))
        answer = httpx.post(
            f"http://127.0.0.1:{ports[0]}/api/webhooks/events", content=body, headers=seed_headers(body)
        )
        assert answer.status_code == 200
        eventually(lambda: api.tokens[17]["status"] == 2)
        info = httpx.get(f"http://127.0.0.1:{ports[1]}/api/info").json()["data"]["enabled"]
        assert info["enforcement"] == "tokens"
        assert info["polling"] is False  # NEW_API_* set, but no POLL_INTERVAL: serve does not poll
        logged = (tmp_path / f"serve-{ports[0]}.log").read_text().splitlines()
        checked = [json.loads(line) for line in logged if line.startswith("{") and '"gateway_checked"' in line]
        assert [entry["ok"] for entry in checked] == [True]  # serve checked the gateway once, at start
    finally:
        for server in servers:
            stop(server)
    topped = run(env, "topup", "alice@example.com", "50", "--reference", "order-1")
    assert topped.returncode == 0, topped.stderr
    assert api.tokens[17]["status"] == 2  # nobody pushes while serve is down
    log = tmp_path / "serve-again.log"
    server = start(["serve", "--port", str(ports[0])], env, log)
    try:
        wait_healthy(f"http://127.0.0.1:{ports[0]}/api/webhooks/health", server, log)
        eventually(lambda: api.tokens[17]["status"] == 1)
    finally:
        stop(server)
    # each intent once, by one instance: enabled when linked (before serve ran), disabled, enabled
    assert api.access_calls == [("token", 17, 1), ("token", 17, 2), ("token", 17, 1)]
    assert database.count("gateway_calls") == 3


def test_enforce_runs_one_pass_and_says_what_it_did(database: Database, api: FakeNewApi) -> None:
    env = environment(database, api)
    api.token(17)
    assert run(env, "user", "create", "--email", "alice@example.com").returncode == 0  # no credits: suspended
    assert run(env, "key", "link", "17", "--user", "alice@example.com").returncode == 0
    done = run(env, "enforce")
    assert done.returncode == 0, done.stderr
    assert '"applied": 1' in done.stdout
    assert api.tokens[17]["status"] == 2
    off = run(env | {"GATEWAY_ENFORCEMENT": "off"}, "enforce")
    assert off.returncode == 2
    assert "GATEWAY_ENFORCEMENT is off" in off.stderr
    missing = run({**env, "NEW_API_BASE_URL": "", "NEW_API_ADMIN_TOKEN": "", "NEW_API_USER_ID": ""}, "enforce")
    assert missing.returncode == 2
    assert "GATEWAY_ENFORCEMENT=tokens needs NEW_API_BASE_URL" in missing.stderr


def test_the_allowance_says_whether_a_key_may_be_served(database: Database) -> None:
    add_user(database.engine, "alice@example.com", credits=5, key="17")
    add_user(database.engine, "bob@example.com", credits=0, key="18")
    settings = dataclasses.replace(settings_for(database), gateway_token=GATEWAY_TOKEN)
    with serving(create_app(settings, database.engine)) as url, httpx.Client(base_url=url) as client:
        bearer = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
        assert client.get("/api/gateway/allowance/17").status_code == 401
        assert client.get("/api/gateway/allowance/17", headers={"Authorization": "Bearer nope"}).status_code == 401
        alice = client.get("/api/gateway/allowance/17", headers=bearer)
        assert alice.json()["data"] == {"allowed": True, "balance": 5, "suspended": False, "available": 5}
        bob = client.get("/api/gateway/allowance/18", headers=bearer).json()["data"]
        assert bob == {
            "allowed": False,
            "balance": 0,
            "suspended": False,
            "available": 0,
        }  # enforcement off: nothing suspended
        unknown = client.get("/api/gateway/allowance/99", headers=bearer)
        assert (unknown.status_code, unknown.json()["success"]) == (404, False)
        metrics = client.get("/metrics").text
        assert "creditrelay_users_suspended 0.0" in metrics
        assert "creditrelay_gateway_intents_pending 0.0" in metrics
        assert 'creditrelay_alerts{status="dead"} 0.0' in metrics
    with serving(create_app(settings_for(database), database.engine)) as url:
        assert httpx.get(f"{url}/api/gateway/allowance/17").status_code == 403  # no GATEWAY_TOKEN: off
