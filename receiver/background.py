"""Work the receiver does besides answering requests: the polling loop when ``POLL_INTERVAL`` is set, and
whatever other workers it is given (the gateway enforcer, the alerts' relay), each an ``async`` function
of a stop event, all started with the app and stopped with it.

Every instance (and every worker process of one) runs them all. The enforcer and the alerts' relay claim
their work item by item with leases; the poller's passes are one piece of work, leased as a whole
(``billing.leases``): the instance holding the lease polls, the others look every interval and take over
once it has run out — within ``POLL_LEASE_INTERVALS`` intervals of the holder's death, at once when the
holder stops cleanly and gives it up.
"""

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

import structlog
from starlette.applications import Starlette

from creditrelay.billing.leases import give_up_lease, take_lease
from creditrelay.billing.polling import STATE_NAME, Poller, PollReport
from creditrelay.receiver.metrics import POLL_PASSES
from creditrelay.schema.database import utc
from creditrelay.schema.errors import DatabaseUnavailable, UpstreamError
from creditrelay.schema.transactions import run_transaction

log = structlog.get_logger()
POLL_LEASE = f"poll:{STATE_NAME}"
# The poll lease lasts this many intervals (at least POLL_LEASE_MIN seconds): the holder renews it at every
# pass and after every slice it commits, so it runs out only when the holder is gone (or a single slice
# takes longer, when a second instance may poll beside it — harmless: billing is idempotent, and the
# watermark never moves back).
POLL_LEASE_INTERVALS = 3
POLL_LEASE_MIN = 60.0


def instance_name() -> str:
    """This process's name on what it holds: unique per process, the unique part first."""
    return f"{os.getpid()}:{socket.gethostname()}"[:128]


class PollLease:
    """The poller's lease, held under this process's name (``holder``)."""

    def __init__(self, poller: Poller, interval: float, holder: str, clock: Callable[[], float] = time.time) -> None:
        self.engine = poller.engine
        self.holder = holder
        self.duration = timedelta(seconds=max(POLL_LEASE_MIN, POLL_LEASE_INTERVALS * interval))
        self.clock = clock
        self.held = False

    def take(self) -> bool:
        """Take or renew the lease; whether this process holds it (a change is logged)."""
        now = utc(self.clock())
        held = run_transaction(self.engine, partial(take_lease, name=POLL_LEASE, holder=self.holder, now=now,
                                                    duration=self.duration))  # fmt: skip
        if held != self.held:
            log.info("poll_lease_taken" if held else "poll_lease_lost", holder=self.holder)
        self.held = held
        return held

    def renew(self, _report: PollReport) -> None:
        """After each slice a pass commits: a long backfill keeps its lease. A failure waits for the next."""
        try:
            self.take()
        except DatabaseUnavailable as error:
            log.warning("poll_lease_not_renewed", error=str(error))

    def give_up(self) -> None:
        if self.held:
            now = utc(self.clock())
            run_transaction(self.engine, partial(give_up_lease, name=POLL_LEASE, holder=self.holder, now=now))
            self.held = False


async def poll_forever(poller: Poller, interval: float, stop: asyncio.Event, lease: PollLease | None = None) -> None:
    """One pass every ``interval`` seconds, off the event loop, while this process holds ``lease`` (if
    given). A failed pass is logged, counted and tried again next time, whatever failed: nothing but
    ``stop`` ends the loop; then the lease is given up."""
    while not stop.is_set():
        try:
            if lease is None or await asyncio.to_thread(lease.take):
                await asyncio.to_thread(poller.run_once)
                POLL_PASSES.labels("ok").inc()
        except (UpstreamError, DatabaseUnavailable) as error:
            POLL_PASSES.labels("failed").inc()
            log.error("poll_failed", error=str(error))
        except Exception:  # a bug or an answer nobody expected: the next pass, as for an outage
            POLL_PASSES.labels("failed").inc()
            log.error("poll_failed", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            continue
    if lease is not None:
        try:
            await asyncio.to_thread(lease.give_up)
        except Exception as error:  # noqa: BLE001 - stopping anyway: the lease runs out by itself
            log.warning("poll_lease_not_given_up", error=str(error))


Worker = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def every(interval: float, work: Callable[[], object], name: str) -> Worker:
    """A worker running ``work`` off the event loop every ``interval`` seconds; a failed pass is logged and
    the next one comes as usual."""

    async def loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(work)
            except Exception:  # an outage, a bug in one pass: never the end of the loop
                log.error(f"{name}_failed", exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                continue

    return loop


def background_lifespan(workers: Sequence[Worker]) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(worker(stop)) for worker in workers]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    return lifespan


def polling(poller: Poller, interval: float, holder: str | None = None) -> Worker:
    """The poll loop, under the poll lease held as ``holder`` (default: this process's name), renewed after
    each slice the poller commits."""
    lease = PollLease(poller, interval, holder or instance_name())
    committed = poller.committed

    def renewing(report: PollReport) -> None:
        if committed is not None:
            committed(report)
        lease.renew(report)

    poller.committed = renewing
    return lambda stop: poll_forever(poller, interval, stop, lease)
