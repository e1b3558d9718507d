"""The relay: drains the outbox to the receiver, concurrently, on a retry schedule, until told to stop.

Each pass claims the due events (oldest due first), tries each once, and records every attempt with
the event's next state in one transaction: delivered; refused (a final 4xx) → dead; otherwise the next
try after the schedule's next delay (or the receiver's ``Retry-After``, clamped, when longer), and dead
once the schedule is spent. An event in flight when the relay is killed is tried again after a restart,
so it may reach the receiver twice — the receiver dedupes it by event id.

A relay claims under its name (``RelayConfig.name``), and on start frees the claims left under that name
alone: a relay restarted under its name gets its killed predecessor's events back at once, and relays
sharing an outbox under names of their own never free each other's (a relay gone for good leaves claims
that come back when their lease runs out). Two relays must not run under one name at once.

Beside delivery, the relay purges what it delivered once that is older than the retention (7 days by
default), when it starts and then hourly, and gives a SQLite outbox's freed pages back; dead events stay
for an operator to look at unless it is told to purge them too.
"""

import asyncio
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import structlog
from sqlalchemy.exc import OperationalError

from creditrelay.schema.database import utc
from creditrelay.schema.errors import DatabaseUnavailable
from creditrelay.schema.outbox import HOLDER_MAX
from creditrelay.sender.batching import MAX_EVENTS, UNSUPPORTED, batch_url, chunks, deliver_batch, receiver_down
from creditrelay.sender.delivery import Attempt, Signer, Verdict, attempt_delivery_async
from creditrelay.sender.metrics import ATTEMPTS, BATCH, IN_FLIGHT, LATENCY, PURGE_FAILURES, PURGED
from creditrelay.sender.outbox import (
    DEAD,
    DELIVERED,
    PENDING,
    PURGE_PAUSE,
    RECLAIM_PAGES,
    Outbox,
    OutboxEvent,
    Settlement,
)

log = structlog.get_logger()

# Delays after the first try, like the anchors' (Svix): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_RETENTION = 7 * 24 * 3600.0  # seconds a delivered event is kept: well past the schedule's ~28 h


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
    # Recorded on this relay's claims; at start the relay frees those left under this name. None: a name of
    # this process alone (nothing to free at start; a killed predecessor's claims wait for their lease).
    name: str | None = None
    batch: bool = True  # many events per request where the receiver has a batch endpoint
    batch_size: int = MAX_EVENTS
    breaker_max: float = 60.0  # the longest wait while the receiver is down
    rediscover: float = 600.0  # seconds before asking a receiver without a batch endpoint again
    # Delivered events created longer ago than ``retention`` seconds are purged when the relay starts and
    # every ``purge_every`` seconds (dead ones too with ``purge_dead``); None: never. On SQLite a purge
    # pauses ``purge_pause`` seconds between its transactions, so the gateway's enqueues get in between.
    retention: float | None = DEFAULT_RETENTION
    purge_dead: bool = False
    purge_every: float = 3600.0
    purge_pause: float = PURGE_PAUSE


def process_name(prefix: str) -> str:
    """A relay name no other process has: ``prefix``, the host and the process id (cut to what a claim
    records, the unique part first)."""
    return f"{prefix}:{os.getpid()}:{socket.gethostname()}"[:HOLDER_MAX]


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
    """Drains the outbox. A pass claims what is due, sends the first request alone and, when the receiver
    answered it, the rest concurrently (batches where the receiver takes them). When the first request
    says the receiver is down, the rest go back untried and the relay waits as one — 1 s, 2 s, … up to
    ``breaker_max`` — instead of spending every event's attempts on a receiver that is not there."""

    def __init__(self, outbox: Outbox, signer: Signer, config: RelayConfig) -> None:
        self.outbox = outbox
        self.signer = signer
        self.config = config
        self.name = (config.name or process_name("relay"))[:HOLDER_MAX]
        self._wakeup: asyncio.Event | None = None
        self.failed_passes = 0
        self.batch_url = batch_url(config.url) if config.batch else None
        self._singles_until = 0.0  # the receiver had no batch endpoint: one event per request until then
        self.breaker_delay = 0.0  # > 0 while the receiver is down
        self._breaker_until = 0.0
        self.failed_purges = 0
        self._next_purge = float("-inf")  # the first when the relay starts
        self._purging: asyncio.Task[int] | None = None

    def notify(self) -> None:
        """New events were enqueued: look now rather than at the next poll (call on the relay's loop)."""
        if self._wakeup is not None:
            self._wakeup.set()

    def _batching(self) -> bool:
        return self.batch_url is not None and self.config.clock() >= self._singles_until

    async def drain_once(self, client: httpx.AsyncClient) -> int:
        """Try every event due now (up to a pass's worth); how many were tried (0 while the breaker is open)."""
        clock = self.config.clock()
        if clock < self._breaker_until:
            return 0
        batching = self._batching()
        size = self.config.batch_size if batching else 4
        lease = timedelta(seconds=self.config.lease)
        most = self.config.concurrency * size
        due = await asyncio.to_thread(self.outbox.claim_due, utc(clock), most, lease, self.name)
        if not due:
            return 0
        probe = due[:1] if self.breaker_delay else []  # the receiver was down: one event asks first
        rest = due[len(probe) :]
        groups = ([probe] if probe else []) + (
            chunks(rest, self.config.batch_size) if batching else [[e] for e in rest]
        )
        first = await self._send(client, groups[0])
        tried = list(zip(groups[0], first, strict=True))
        untried: list[OutboxEvent] = []
        if receiver_down(first):
            untried = [event for group in groups[1:] for event in group]
            self._open_breaker(first[0])
        else:
            self.breaker_delay = 0.0
            limit = asyncio.Semaphore(self.config.concurrency)

            async def send(group: list[OutboxEvent]) -> list[tuple[OutboxEvent, Attempt]]:
                async with limit:
                    return list(zip(group, await self._send(client, group), strict=True))

            for pairs in await asyncio.gather(*(send(group) for group in groups[1:])):
                tried += pairs
        settlements = [settle(event, attempt, self.config) for event, attempt in tried]
        for s in settlements:
            ATTEMPTS.labels(s.attempt.verdict.value).inc()
        await asyncio.to_thread(self.outbox.settle, settlements)
        if untried:
            await asyncio.to_thread(self.outbox.release, [event.event_id for event in untried])
        for s in settlements:
            if s.status != DELIVERED:
                log.warning("relay_attempt_failed", event_id=s.attempt.event_id, status=s.status, error=s.error)
        return 0 if self.breaker_delay else len(tried)

    async def _send(self, client: httpx.AsyncClient, group: list[OutboxEvent]) -> list[Attempt]:
        IN_FLIGHT.inc(len(group))
        try:
            return await self._deliver(client, group)
        finally:
            IN_FLIGHT.dec(len(group))

    async def _deliver(self, client: httpx.AsyncClient, group: list[OutboxEvent]) -> list[Attempt]:
        if self.batch_url is not None and self._batching() and len(group) > 1:
            answer = await deliver_batch(client, self.batch_url, group, self.signer)
            if isinstance(answer, list):
                BATCH.observe(len(group))
                LATENCY.observe(answer[0].latency_ms / 1000)
                return answer
            if answer == UNSUPPORTED:
                log.info("relay_batches_unsupported", url=self.batch_url, retry_in=self.config.rediscover)
                self._singles_until = self.config.clock() + self.config.rediscover
        url, signer = self.config.url, self.signer
        attempts = await asyncio.gather(
            *(attempt_delivery_async(client, url, e.event_id, e.body, signer) for e in group)
        )
        for attempt in attempts:
            BATCH.observe(1)
            LATENCY.observe(attempt.latency_ms / 1000)
        return list(attempts)

    def _open_breaker(self, attempt: Attempt) -> None:
        self.breaker_delay = min(self.config.breaker_max, max(1.0, self.breaker_delay * 2))
        self._breaker_until = self.config.clock() + self.breaker_delay
        log.warning("relay_receiver_down", wait=self.breaker_delay, status=attempt.status_code, error=attempt.snippet)

    def purge_if_due(self, stop: asyncio.Event) -> "asyncio.Task[int] | None":
        """Start a purge in the background (``purge_now``) if one is due by the clock and none is running."""
        clock = self.config.clock()
        if self.config.retention is None or clock < self._next_purge:
            return None
        if self._purging is not None and not self._purging.done():
            return None
        self._next_purge = clock + self.config.purge_every
        self._purging = asyncio.create_task(self.purge_now(stop))
        return self._purging

    async def purge_now(self, stop: asyncio.Event) -> int:
        """Purge the events past the retention, a short transaction at a time, then give a SQLite outbox's
        free pages back, a step at a time; until done or ``stop``. How many events went. A failure is
        logged and counted (``failed_purges``), never raised: delivery goes on whatever becomes of a purge.
        Relays sharing an outbox may purge at once: each deletes what it locked and skips the rest."""
        if self.config.retention is None:
            return 0
        statuses = [DELIVERED, DEAD] if self.config.purge_dead else [DELIVERED]
        older_than = utc(self.config.clock() - self.config.retention)
        purged = freed = 0
        try:
            after: int | None = 0
            while after is not None and not stop.is_set():
                deleted, after = await asyncio.to_thread(self.outbox.purge_chunk, statuses, older_than, after)
                purged += deleted
                PURGED.inc(deleted)
                if after is not None and self.outbox.serial_writes:
                    await asyncio.sleep(self.config.purge_pause)
            while not stop.is_set():
                step = await asyncio.to_thread(self.outbox.reclaim_space, RECLAIM_PAGES)
                freed += step
                if step < RECLAIM_PAGES:
                    break
                await asyncio.sleep(self.config.purge_pause)
        except (OperationalError, DatabaseUnavailable) as error:  # the outbox's database is away: next time
            self._purge_failed()
            log.error("relay_purge_failed", error=str(error), purged=purged)
        except Exception:  # a bug: logged in full, and the relay goes on
            self._purge_failed()
            log.error("relay_purge_failed", purged=purged, exc_info=True)
        else:
            if purged or freed:
                log.info("relay_purged", events=purged, pages_freed=freed, older_than=older_than.isoformat())
        return purged

    def _purge_failed(self) -> None:
        self.failed_purges += 1
        PURGE_FAILURES.inc()

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
                self.purge_if_due(stop)
                try:
                    if not resumed:  # what a killed predecessor of this name had in flight
                        released = await asyncio.to_thread(self.outbox.release_claims, self.name)
                        resumed = True
                        if released:
                            log.info("relay_resumed", name=self.name, in_flight_again=released)
                    if await self.drain_once(client):
                        continue
                except (OperationalError, DatabaseUnavailable) as error:  # the outbox's database is away: wait
                    self.failed_passes += 1
                    log.error("relay_outbox_unavailable", error=str(getattr(error, "orig", None) or error))
                except Exception:  # one failed pass (a bug, an unreadable answer) never ends the relay
                    self.failed_passes += 1
                    log.error("relay_pass_failed", exc_info=True)
                self._wakeup.clear()
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wakeup.wait())]
                wait = max(self.config.poll_interval, self._breaker_until - self.config.clock())
                await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
        if self._purging is not None:
            await self._purging  # it stops after its current transaction
