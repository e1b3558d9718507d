"""`creditrelay gateway check` against the fake new-api and LiteLLM, and a wrong set-up said at once —
the URL or the setting named, never retried for half a minute — by `gateway check`, `poll`, `reconcile`
and `enforce` alike."""

import json
import os
import socket
import subprocess
import time

import pytest

from scripts.processes import CREDITRELAY
from tests.support.database import Database
from tests.support.fake_litellm import MASTER_KEY, FakeLiteLLM, fake_litellm
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi, newapi_environment

pytestmark = pytest.mark.slow  # each test starts the command line as processes


def run(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """The command, and the seconds it took."""
    started = time.monotonic()
    done = subprocess.run([CREDITRELAY, *args], capture_output=True, text=True, env=os.environ | env, timeout=60)
    return done, time.monotonic() - started


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_check_passes_against_new_api_one_line_per_check(database: Database, api: FakeNewApi) -> None:
    env = newapi_environment(database, api) | {"POLL_QUOTA_PER_CREDIT": "5000"}
    done, _ = run(env, "gateway", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:4]] == [["ok", "new-api"]] * 4
    assert f"new-api answers at {api.url}" in lines[0]
    assert "1 USD 100 credits" in lines[0]  # 500,000 quota per USD at 5,000 per credit
    assert "role 100" in lines[1]
    assert lines[-1] == "all checks passed"
    as_json, _ = run(env, "gateway", "check", "--json")
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == ["new-api reach", "new-api token", "new-api account", "new-api log"]


@pytest.mark.parametrize("where", ["closed port", "404 path"])
def test_a_wrong_address_fails_at_once_naming_the_setting(database: Database, api: FakeNewApi, where: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}" if where == "closed port" else f"{api.url}/new-api"
    env = newapi_environment(database, api) | {"NEW_API_BASE_URL": url, "GATEWAY_ENFORCEMENT": "tokens"}
    done, seconds = run(env, "gateway", "check")
    assert (done.returncode, seconds < 5) == (1, True), done.stdout
    first = done.stdout.splitlines()[0]
    assert first.startswith("FAIL  new-api reach")
    assert "check NEW_API_BASE_URL" in first
    assert ("connection refused" if where == "closed port" else "/api/status") in first
    assert done.stdout.count("skip ") == 3
    run(env, "migrate")
    for command in (["poll"], ["reconcile"], ["enforce"]):  # the same words, at once: no retries
        failed, seconds = run(env, *command)
        assert failed.returncode != 0, command
        assert seconds < 15, (command, seconds)  # retrying took ~30 s; starting these commands takes ~2 s
        assert "check NEW_API_BASE_URL" in failed.stderr, (command, failed.stderr)


def test_wrong_credentials_name_the_token_and_the_account(database: Database, api: FakeNewApi) -> None:
    env = newapi_environment(database, api)
    bad_token, _ = run(env | {"NEW_API_ADMIN_TOKEN": "not-the-token"}, "gateway", "check")
    assert bad_token.returncode == 1
    assert "refused the credentials (HTTP 401" in bad_token.stdout
    assert "check NEW_API_ADMIN_TOKEN and NEW_API_USER_ID" in bad_token.stdout
    other_account, _ = run(env | {"NEW_API_USER_ID": "7"}, "gateway", "check")
    assert f"set NEW_API_USER_ID={ADMIN_USER}" in other_account.stdout
    api.role = 1  # a common user's access token: no log API
    common, _ = run(env, "gateway", "check")
    assert "role 1: it needs admin (10) or root (100)" in common.stdout
    assert ADMIN_TOKEN not in common.stdout + common.stderr  # a secret is never printed


def test_the_check_passes_against_litellm_and_names_a_wrong_master_key() -> None:
    proxy: FakeLiteLLM
    with fake_litellm() as proxy:
        proxy.add_key("sk-alice-1")
        env = {"LITELLM_BASE_URL": proxy.url, "LITELLM_MASTER_KEY": MASTER_KEY}
        done, _ = run(env, "gateway", "check")
        assert done.returncode == 0, done.stdout
        assert "LITELLM_MASTER_KEY reads the proxy's keys (1 keys)" in done.stdout
        wrong, seconds = run(env | {"LITELLM_MASTER_KEY": "sk-wrong"}, "gateway", "check")
        assert (wrong.returncode, seconds < 5) == (1, True)
        assert "check LITELLM_MASTER_KEY" in wrong.stdout


def test_without_a_gateway_the_check_says_what_to_set() -> None:
    done, _ = run({"NEW_API_BASE_URL": "", "LITELLM_BASE_URL": ""}, "gateway", "check")
    assert done.returncode == 2
    assert "no gateway is configured" in done.stderr
