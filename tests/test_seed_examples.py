"""Seed 001's own client code — the direct-HTTP Python and Node.js examples and the SDK test script —
run as written (configuration from the environment) against the real server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.credits import TELEGRAM_ID, Credentials, add_telegram_user, register_client
from tests.support.database import Database
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow  # each test starts the command line or a server as processes

EXAMPLES = Path(__file__).with_name("seed_examples")


@pytest.fixture
def creds(receiver: Receiver, database: Database) -> Credentials:
    add_telegram_user(database.engine, credits=0, name="Li Lei")
    return register_client(database.engine)


def environment(receiver: Receiver, creds: Credentials) -> dict[str, str]:
    return os.environ | {
        "CREDIT_API_URL": receiver.url,
        "CREDIT_API_KEY": creds.api_key,
        "CREDIT_SECRET": creds.secret,
        "CREDIT_SOURCE": creds.source,
    }


def balance(database: Database) -> int:
    return int(database.scalar("SELECT balance FROM users WHERE telegramId = :t", t=TELEGRAM_ID))


def test_seed_python_direct_http_example(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """The seed's requests-based example gets success and the new balance."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "direct_http.py")],
        env=environment(receiver, creds), capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "'success': True" in out
    assert "'balance': 100" in out
    assert balance(database) == 100


@pytest.mark.node
def test_seed_node_example(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """The seed's Node.js (axios) example computes the same token and is credited."""
    env = environment(receiver, creds) | {"NODE_PATH": str(EXAMPLES / "node_modules")}
    out = subprocess.run(
        ["node", str(EXAMPLES / "direct_http.js")], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert json.loads(out)["data"] == {"telegram_id": TELEGRAM_ID, "balance": 100, "change": 100, "duplicate": False}
    assert balance(database) == 100


def test_seed_sdk_test_script(receiver: Receiver, database: Database, creds: Credentials) -> None:
    """The seed's SDK test script, as written (its own import line), runs all four steps."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "sdk_test_script.py")],
        env=environment(receiver, creds), capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "结果: True\n消息: Credits updated" in out
    assert "余额: 100" in out
    assert "  +100 - 测试" in out
    assert out.rstrip().endswith("结果: True")
    assert balance(database) == 50
