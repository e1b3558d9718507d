"""One event to one receiver: sign each attempt, classify the answer, retry what deserves a retry.

Retried: connection errors, timeouts, 408, 429 and 5xx, after ``Retry-After`` (clamped) when the receiver
gives one, else exponential backoff with full jitter. Final: every other 4xx (400, 401, 409, 413, 422…).
A 2xx — a duplicate included — is delivered. The body and the event id never change between attempts;
the Standard Webhooks timestamp and signature are made anew for each.
"""

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from enum import StrEnum

import httpx
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_random_exponential

from creditrelay.schema.outbox import SNIPPET_LENGTH as SNIPPET_LENGTH
from creditrelay.schema.signing import WebhookSecret, signature_headers

USER_AGENT = "creditrelay-sender/0.1"


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


@dataclass(frozen=True)
class Attempt:
    """What one try did: when, how long it took, and what the receiver said."""

    event_id: str
    attempted_at: float
    verdict: Verdict
    status_code: int | None
    latency_ms: int
    snippet: str
    retry_after: float | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class DeliveryPolicy:
    attempts: int = 6
    timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 300.0


@dataclass(frozen=True)
class Signer:
    """Signs a body for one attempt with both schemes (by default) under the first secret."""

    secret: WebhookSecret
    seed: bool = True
    standard: bool = True
    clock: Callable[[], float] = field(default=time.time)

    def headers(self, event_id: str, body: bytes) -> dict[str, str]:
        signed = signature_headers(
            self.secret, event_id, int(self.clock()), body, seed=self.seed, standard=self.standard
        )
        return {"Content-Type": "application/json", "User-Agent": USER_AGENT, **signed}


def classify(status_code: int) -> Verdict:
    if 200 <= status_code < 300:
        return Verdict.DELIVERED
    if status_code in (408, 429) or status_code >= 500:
        return Verdict.RETRY
    return Verdict.REFUSED


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def _is_duplicate(response: httpx.Response) -> bool:
    try:
        answer = response.json()
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("duplicate") is True


def attempt_from_response(event_id: str, started: float, response: httpx.Response, clock: float) -> Attempt:
    return Attempt(
        event_id=event_id,
        attempted_at=started,
        verdict=classify(response.status_code),
        status_code=response.status_code,
        latency_ms=int((clock - started) * 1000),
        snippet=response.text[:SNIPPET_LENGTH],
        retry_after=parse_retry_after(response.headers.get("retry-after"), clock),
        duplicate=_is_duplicate(response),
    )


def attempt_from_error(event_id: str, started: float, error: httpx.HTTPError, clock: float) -> Attempt:
    """A try that got no usable answer (no connection, a timeout, a body that could not be decoded): retried."""
    message = f"{type(error).__name__}: {error}"[:SNIPPET_LENGTH]
    return Attempt(event_id, started, Verdict.RETRY, None, int((clock - started) * 1000), message)


def attempt_delivery(client: httpx.Client, url: str, event_id: str, body: bytes, signer: Signer) -> Attempt:
    """One try, synchronously."""
    started = time.time()
    try:
        response = client.post(url, content=body, headers=signer.headers(event_id, body))
    except httpx.HTTPError as error:
        return attempt_from_error(event_id, started, error, time.time())
    return attempt_from_response(event_id, started, response, time.time())


async def attempt_delivery_async(
    client: httpx.AsyncClient, url: str, event_id: str, body: bytes, signer: Signer
) -> Attempt:
    """One try, on an event loop."""
    started = time.time()
    try:
        response = await client.post(url, content=body, headers=signer.headers(event_id, body))
    except httpx.HTTPError as error:
        return attempt_from_error(event_id, started, error, time.time())
    return attempt_from_response(event_id, started, response, time.time())


class _Wait:
    """Retry-After (clamped) when the receiver asked for it, else exponential backoff with jitter."""

    def __init__(self, policy: DeliveryPolicy) -> None:
        self.policy = policy
        self.backoff = wait_random_exponential(multiplier=policy.backoff_initial, max=policy.backoff_max)

    def __call__(self, state: RetryCallState) -> float:
        assert state.outcome is not None
        last: Attempt = state.outcome.result()
        if last.retry_after is not None:
            return min(last.retry_after, self.policy.retry_after_max)
        return float(self.backoff(state))


def deliver(
    client: httpx.Client,
    url: str,
    event_id: str,
    body: bytes,
    signer: Signer,
    policy: DeliveryPolicy = DeliveryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> list[Attempt]:
    """Deliver with in-process retries; every attempt in order, the last one saying how it ended."""
    attempts: list[Attempt] = []

    def once() -> Attempt:
        attempts.append(attempt_delivery(client, url, event_id, body, signer))
        return attempts[-1]

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=_Wait(policy),
        retry=retry_if_result(lambda attempt: attempt.verdict is Verdict.RETRY),
        sleep=sleep,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    retrying(once)
    return attempts
