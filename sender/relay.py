"""The relay: drains the outbox to the receiver, concurrently, on a retry schedule, until told to stop.

Each pass claims the due events (oldest due first), tries each once, and records every attempt with
the event's next state in one transaction: delivered; refused (a final 4xx) → dead; otherwise the next
try after the schedule's next delay (or the receiver's ``Retry-After``, clamped, when longer), and dead
once the schedule is spent. An event in flight when the relay is killed is tried again after a restart,
so it may reach the receiver twice — the receiver dedupes it by event id.
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import structlog
from sqlalchemy.exc import OperationalError

from creditrelay.schema.database import utc
from creditrelay.sender.delivery import Attempt, Signer, Verdict, attempt_delivery_async
from creditrelay.sender.outbox import DEAD, DELIVERED, PENDING, Outbox, OutboxEvent, Settlement

log = structlog.get_logger()

# Delays after the first try, like the anchors' (Svix): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


@dataclass(frozen=True)
class RelayConfig:
    url: str
    schedule: Sequence[float] = DEFAULT_SCHEDULE
    concurrency: int = 16
    timeout: float = 10.0
    poll_interval: float = 1.0
    lease: float = 120.0
    retry_after_max: float = 3600.0
    clock: Callable[[], float] = field(default=time.time)
    # One relay per outbox frees, at start, the claims its killed predecessor left; relays sharing an
    # outbox (one per serve instance) must not, and wait for those claims' leases to run out instead.
    shared: bool = False


def settle(event: OutboxEvent, attempt: Attempt, config: RelayConfig) -> Settlement:
    """The event's next state after ``attempt`` (its ``attempts`` counts the tries before this one)."""
    if attempt.verdict is Verdict.DELIVERED:
        return Settlement(attempt, DELIVERED)
    error = f"{attempt.status_code or 'no answer'}: {attempt.snippet}"
    if attempt.verdict is Verdict.REFUSED:
        return Settlement(attempt, DEAD, error=error)
    tries = event.attempts + 1
    if tries > len(config.schedule):
        return Settlement(attempt, DEAD, error=error)
    delay = config.schedule[tries - 1]
    if attempt.retry_after is not None:
        delay = max(delay, min(attempt.retry_after, config.retry_after_max))
    return Settlement(attempt, PENDING, utc(config.clock() + delay), error)


class OutboxRelay:
    def __init__(self, outbox: Outbox, signer: Signer, config: RelayConfig) -> None:
        self.outbox = outbox
        self.signer = signer
        self.config = config
        self._wakeup: asyncio.Event | None = None
        self.failed_passes = 0

    def notify(self) -> None:
        """New events were enqueued: look now rather than at the next poll (call on the relay's loop)."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def drain_once(self, client: httpx.AsyncClient) -> int:
        """Try every event due now (up to a batch); how many were tried."""
        now = utc(self.config.clock())
        lease = timedelta(seconds=self.config.lease)
        due = await asyncio.to_thread(self.outbox.claim_due, now, self.config.concurrency * 4, lease)
        if not due:
            return 0
        limit = asyncio.Semaphore(self.config.concurrency)

        async def one(event: OutboxEvent) -> Settlement:
            async with limit:
                attempt = await attempt_delivery_async(client, self.config.url, event.event_id, event.body, self.signer)
            return settle(event, attempt, self.config)

        settlements = await asyncio.gather(*(one(e) for e in due))
        await asyncio.to_thread(self.outbox.settle, settlements)
        for s in settlements:
            if s.status != DELIVERED:
                log.warning("relay_attempt_failed", event_id=s.attempt.event_id, status=s.status, error=s.error)
        return len(due)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set. A failed pass (the outbox's database away, a bug, an answer that
        cannot be read) is logged and counted, and the next pass comes after ``poll_interval``: nothing
        but ``stop`` ends the relay."""
        self._wakeup = asyncio.Event()
        resumed = False
        timeout = httpx.Timeout(self.config.timeout)
        limits = httpx.Limits(max_connections=self.config.concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            while not stop.is_set():
                try:
                    if not resumed and not self.config.shared:
                        released = await asyncio.to_thread(self.outbox.release_claims)
                        resumed = True
                        if released:
                            log.info("relay_resumed", in_flight_again=released)
                    if await self.drain_once(client):
                        continue
                except OperationalError as error:  # the outbox's database is away: wait, then try again
                    self.failed_passes += 1
                    log.error("relay_outbox_unavailable", error=str(error.orig))
                except Exception:  # one failed pass (a bug, an unreadable answer) never ends the relay
                    self.failed_passes += 1
                    log.error("relay_pass_failed", exc_info=True)
                self._wakeup.clear()
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wakeup.wait())]
                await asyncio.wait(waits, timeout=self.config.poll_interval, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
