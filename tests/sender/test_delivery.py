"""sender/delivery.py: signatures, what is retried, what is final, and how long it waits."""

import hashlib
import hmac
import itertools
import json
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from standardwebhooks import Webhook

from creditrelay.schema.signing import WebhookSecret
from creditrelay.sender.delivery import Attempt, DeliveryPolicy, Signer, Verdict, deliver, parse_retry_after
from creditrelay.sender.events import encode_event, usage_event
from tests.support.scripted_receiver import Reply, scripted_receiver
from tests.support.signing import SECRET, STANDARD_SECRET

EVENT = usage_event(remote_key_id=1, model="gpt-4", credit_cost=15, prompt_tokens=100, completion_tokens=50)
BODY = encode_event(EVENT)


def send(url: str, policy: DeliveryPolicy | None = None) -> tuple[list[Attempt], list[float]]:
    """Deliver EVENT with injected sleeps and a clock that moves a minute per attempt."""
    sleeps: list[float] = []
    ticks = itertools.count(1_800_000_000, 60)
    signer = Signer(WebhookSecret.parse(SECRET), clock=lambda: float(next(ticks)))
    with httpx.Client(timeout=5) as client:
        attempts = deliver(client, url, EVENT["eventId"], BODY, signer, policy or DeliveryPolicy(), sleeps.append)
    return attempts, sleeps


def test_both_signatures_verify_with_independent_code() -> None:
    """The seed header matches stdlib hmac; the Standard Webhooks headers pass the reference library."""
    with scripted_receiver(200) as receiver:
        sleeps: list[float] = []
        signer = Signer(WebhookSecret.parse(STANDARD_SECRET))
        with httpx.Client() as client:
            deliver(client, receiver.url, EVENT["eventId"], BODY, signer, DeliveryPolicy(), sleeps.append)
    [seen] = receiver.seen
    assert seen.body == BODY
    assert seen.headers["x-webhook-signature"] == hmac.new(STANDARD_SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert seen.headers["webhook-id"] == EVENT["eventId"]
    assert Webhook(STANDARD_SECRET).verify(BODY.decode(), seen.headers) == json.loads(BODY)


def test_two_503s_then_200_is_three_attempts_with_one_id() -> None:
    """Retries keep the body and the id; only the Standard timestamp and signature are made anew."""
    with scripted_receiver(503, 503, 200) as receiver:
        attempts, sleeps = send(receiver.url)
    assert [a.status_code for a in attempts] == [503, 503, 200]
    assert attempts[-1].verdict is Verdict.DELIVERED
    assert len(sleeps) == 2
    assert {s.body for s in receiver.seen} == {BODY}
    assert {s.headers["webhook-id"] for s in receiver.seen} == {EVENT["eventId"]}
    assert len({s.headers["webhook-timestamp"] for s in receiver.seen}) == 3
    assert len({s.headers["x-webhook-signature"] for s in receiver.seen}) == 1


@pytest.mark.parametrize("status", [400, 401, 409, 413, 422])
def test_a_final_4xx_is_one_attempt(status: int) -> None:
    """A refusal is final: no retry, no sleep."""
    with scripted_receiver(status) as receiver:
        attempts, sleeps = send(receiver.url)
    assert [a.verdict for a in attempts] == [Verdict.REFUSED]
    assert sleeps == []


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(status: int) -> None:
    """408, 429 and every 5xx are worth another try."""
    with scripted_receiver(status, 200) as receiver:
        attempts, _ = send(receiver.url)
    assert [a.status_code for a in attempts] == [status, 200]


def test_retry_after_is_honoured_and_clamped() -> None:
    """The receiver's Retry-After sets the wait, up to the policy's ceiling."""
    script = [Reply(429, {"Retry-After": "7"}), Reply(503, {"Retry-After": "86400"}), Reply(200)]
    with scripted_receiver(*script) as receiver:
        attempts, sleeps = send(receiver.url, DeliveryPolicy(retry_after_max=120))
    assert sleeps == [7, 120]
    assert attempts[-1].verdict is Verdict.DELIVERED


def test_backoff_without_retry_after_is_bounded_jitter() -> None:
    """Without Retry-After the waits are random but never beyond the backoff ceiling."""
    with scripted_receiver(500, 500, 500, 500, 200) as receiver:
        _, sleeps = send(receiver.url, DeliveryPolicy(backoff_initial=0.5, backoff_max=3))
    assert len(sleeps) == 4
    assert all(0 <= s <= 3 for s in sleeps)


def test_connection_refused_is_retried_until_the_policy_gives_up() -> None:
    """Nobody listening: every attempt fails with a transport error, then the last one is returned."""
    with scripted_receiver() as receiver:
        url = receiver.url
    attempts, sleeps = send(url, DeliveryPolicy(attempts=3))
    assert [a.status_code for a in attempts] == [None, None, None]
    assert "Connect" in attempts[-1].snippet
    assert len(sleeps) == 2


def test_http_date_retry_after_is_understood() -> None:
    """Retry-After may be an HTTP date; a date in the past means now, garbage means absent."""
    now = 1_800_000_000.0
    later = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert parse_retry_after(later, now) == 30
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_a_duplicate_answer_counts_as_delivered() -> None:
    """The receiver already had it: that is a delivery."""
    answer = {"success": True, "message": "Event already processed", "duplicate": True}
    with scripted_receiver(Reply(200, body=answer)) as receiver:
        attempts, sleeps = send(receiver.url)
    assert [(a.verdict, a.duplicate) for a in attempts] == [(Verdict.DELIVERED, True)]
    assert sleeps == []


def test_event_ids_are_minted_once_per_event() -> None:
    """Two usages get two ids; one usage keeps its id in every encoding."""
    first = usage_event(remote_key_id=1, model="m", credit_cost=1)
    second = usage_event(remote_key_id=1, model="m", credit_cost=1)
    assert first["eventId"] != second["eventId"]
    assert json.loads(encode_event(first))["eventId"] == first["eventId"]
