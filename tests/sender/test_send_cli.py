"""`creditrelay send URL FILE|-` against the real receiver and a scripted one."""

import json
import os
import subprocess

import pytest

from creditrelay.sender.events import encode_event, usage_event
from scripts.processes import CREDITRELAY
from tests.support.database import Database
from tests.support.receiver import Receiver
from tests.support.scripted_receiver import scripted_receiver
from tests.support.signing import SECRET

pytestmark = pytest.mark.slow  # each test starts the command line or a server as processes


def send(url: str, body: bytes) -> subprocess.CompletedProcess[bytes]:
    env = os.environ | {"WEBHOOK_SECRET": SECRET}
    return subprocess.run(
        [CREDITRELAY, "send", url, "-"], input=body, capture_output=True, env=env, timeout=60, check=False
    )


def test_send_charges_once_through_the_real_receiver(receiver: Receiver, database: Database) -> None:
    """Delivered: exit 0 with a JSON report; sent again: delivered as a duplicate, charged once."""
    body = encode_event(usage_event(remote_key_id=1, model="gpt-4", credit_cost=30))
    url = f"{receiver.url}/api/webhooks/events"
    first, second = send(url, body), send(url, body)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) | {"eventId": None} == {
        "eventId": None,
        "delivered": True,
        "duplicate": False,
        "attempts": 1,
        "status": 200,
    }
    assert json.loads(second.stdout)["duplicate"] is True
    assert database.scalar("SELECT balance FROM users") == 970


def test_send_refused_is_one_attempt_and_a_non_zero_exit() -> None:
    """A 400 is final: one request, exit 1, the receiver's message on stderr."""
    with scripted_receiver(400) as receiver:
        result = send(receiver.url, encode_event(usage_event(remote_key_id=1, model="m", credit_cost=1)))
    assert result.returncode == 1
    assert b"scripted 400" in result.stderr
    assert len(receiver.seen) == 1


def test_send_refuses_an_invalid_event_before_sending() -> None:
    """A file that is not a valid event never reaches the network."""
    with scripted_receiver() as receiver:
        result = send(receiver.url, b'{"eventType": "usage"}')
    assert result.returncode == 1
    assert b"eventId" in result.stderr
    assert receiver.seen == []
