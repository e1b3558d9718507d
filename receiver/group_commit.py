"""Group commit: the events of concurrent requests share one transaction, and each request still gets
its own outcome, after the commit.

Requests put their verified, parsed events in a queue; a writer takes whatever is waiting (at most
``max_batch``; under no load that is one event, so nobody waits for a batch to fill), applies it in one
transaction from a thread of its own — never on the event loop; under ``serve`` the thread hands it to a
writer process and waits (``receiver/writers.py``) — and resolves each request's future. A batch that
fails (the database refuses it, or a bug trips on it) is retried one event at a time, so a poison event
fails alone and the writer goes on; when the database is unreachable every event of the batch gets
``DatabaseUnavailable`` (503) and nothing of it was committed.

Nothing outside a batch's own work can end a writer: a failure in handing a batch over, logging or
counting fails that batch's requests (500) and the writer takes the next one. A writer task that stops
anyway is started again on the next request or health check, and ``stalled`` tells health when no
writer has made progress for ``stall_seconds`` while events wait.

Health asks the writers themselves (``check``): a batch committed a moment ago answers it; otherwise a
probe runs where a writer's batches run (its thread's connection, or its writer process), a write
transaction that writes nothing (``probe``). So
health says what the writers can do now — not whether one more connection opens (the writers hold theirs
when ``max_connections`` is full), nor whether a read answers (it does under ``FLUSH TABLES WITH READ
LOCK``, which no commit gets past).
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog

from creditrelay.billing.deliveries import DeliveryOutcome
from creditrelay.receiver.metrics import BATCH_SIZE, COMMIT_SECONDS, WRITER_FAILURES, WRITER_RESTARTS
from creditrelay.schema.errors import DatabaseUnavailable
from creditrelay.schema.wire import Event

log = structlog.get_logger()
Outcome = DeliveryOutcome | Exception
Pending = tuple[Event, "asyncio.Future[DeliveryOutcome]", float]  # the event, its request's future, when it came


class GroupCommitter:
    def __init__(
        self,
        apply_batch: Callable[[Sequence[Event]], list[DeliveryOutcome]],
        *,
        probe: Callable[[], None] = lambda: None,
        max_batch: int = 512,
        writers: int = 1,
        stall_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.apply_batch = apply_batch
        self.probe = probe  # a write transaction that writes nothing, on a writer's connection
        self.max_batch = max_batch
        self.writers = writers
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.executor = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="group-commit")
        # What is waiting, and a future the idle writers await (set by the next arrival). A deque and one
        # shared future cost less per event than an asyncio.Queue's put and get.
        self._waiting: deque[Pending] = deque()
        self._arrival: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[int, float] = {}  # writer number -> when its current batch started
        self._committed_at: float | None = None  # when a batch or a probe last committed
        self._probing: asyncio.Future[None] | None = None  # the probe in flight, shared by every check
        self._closed = False

    async def submit(self, event: Event) -> DeliveryOutcome:
        """The event's outcome, once the transaction holding it has committed."""
        self.ensure_writers()
        future: asyncio.Future[DeliveryOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, future, self.clock()))
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)
        return await future

    async def submit_many(self, events: Sequence[Event]) -> list[DeliveryOutcome | BaseException]:
        """Each event's outcome (or what failed it), in order, once the transactions holding them have
        committed; the events join the queue together, so they tend to share a writer's batch."""
        self.ensure_writers()
        loop = asyncio.get_running_loop()
        now = self.clock()
        futures: list[asyncio.Future[DeliveryOutcome]] = [loop.create_future() for _ in events]
        self._waiting.extend((event, future, now) for event, future in zip(events, futures, strict=True))
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def ensure_writers(self) -> None:
        """Start the writers, and start again any that stopped (on the running event loop)."""
        if self._closed:
            return
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._write_forever(n)) for n in range(self.writers)]
            return
        for number, task in enumerate(self._tasks):
            if task.done():
                WRITER_RESTARTS.inc()
                log.error("writer_restarted", writer=number, reason=_ending(task))
                self._in_flight.pop(number, None)
                self._tasks[number] = asyncio.create_task(self._write_forever(number))

    def stalled(self) -> bool:
        """Whether no writer can commit: events or a batch have waited past ``stall_seconds``."""
        oldest = list(self._in_flight.values())
        if self._waiting:
            oldest.append(self._waiting[0][2])
        return bool(oldest) and self.clock() - min(oldest) > self.stall_seconds

    async def check(self, fresh: float, timeout: float) -> None:
        """Return when a writer can commit: one did within ``fresh`` seconds, or a probe does now (one at a
        time, awaited by every caller). ``DatabaseUnavailable`` when it cannot, ``TimeoutError`` when the
        probe takes longer than ``timeout`` (a writer is stuck, or waits for a lock)."""
        if self._committed_at is not None and self.clock() - self._committed_at <= fresh:
            return
        if self._probing is None or self._probing.done():
            loop = asyncio.get_running_loop()
            self._probing = asyncio.ensure_future(loop.run_in_executor(self.executor, self._probe))
        await asyncio.wait_for(asyncio.shield(self._probing), timeout)

    def _probe(self) -> None:
        self.probe()
        self._committed_at = self.clock()

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def _write_forever(self, number: int) -> None:
        loop = asyncio.get_running_loop()
        waiting = self._waiting
        while True:
            while not waiting:
                if self._arrival is None or self._arrival.done():
                    self._arrival = loop.create_future()
                await self._arrival
            batch = [waiting.popleft() for _ in range(min(len(waiting), self.max_batch))]
            self._in_flight[number] = batch[0][2]
            try:
                started = time.perf_counter()
                outcomes = await loop.run_in_executor(self.executor, self.apply_isolated, [e for e, _, _ in batch])
                COMMIT_SECONDS.observe(time.perf_counter() - started)
                BATCH_SIZE.observe(len(batch))
                _resolve(batch, outcomes)
            except Exception as error:  # noqa: BLE001 - outside billing: the batch's requests fail, the writer goes on
                WRITER_FAILURES.inc()
                _resolve(batch, [error] * len(batch))
            finally:
                self._in_flight.pop(number, None)

    def apply_isolated(self, events: Sequence[Event]) -> list[Outcome]:
        """Outcomes for a batch; a failing batch is split so that only the failing events fail."""
        try:
            outcomes: list[Outcome] = list(self.apply_batch(events))
        except DatabaseUnavailable as error:
            self._committed_at = None  # what a commit a moment ago said no longer holds
            return [error] * len(events)
        except Exception as error:  # the database refused it, or a bug: either way the writer goes on
            if len(events) == 1:
                log.error("event_failed", event_id=events[0].event_id, exc_info=True)
                return [error]
            log.warning("batch_failed_retrying_one_by_one", size=len(events), error=repr(error))
            return [outcome for event in events for outcome in self.apply_isolated([event])]
        self._committed_at = self.clock()
        return outcomes


def _resolve(batch: Sequence[Pending], outcomes: Sequence[Outcome]) -> None:
    """Answer each request of ``batch`` (in order) with its outcome; a request whose client went away is
    skipped — its event is committed all the same."""
    for (_, future, _), outcome in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _ending(task: "asyncio.Task[None]") -> str:
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return "returned" if error is None else repr(error)
