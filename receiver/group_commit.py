"""Group commit: the events of concurrent requests share one transaction, and each request still gets
its own outcome, after the commit.

Requests put their verified, parsed events in a queue; a writer takes whatever is waiting (at most
``max_batch``; under no load that is one event, so nobody waits for a batch to fill), applies it through
billing's batch-first ``record_deliveries`` in one transaction on a thread of its own — never on the
event loop — and resolves each request's future. A batch that fails (the database refuses it, or a bug
trips on it) is retried one event at a time, so a poison event fails alone and the writer goes on; when
the database is unreachable every event of the batch gets ``DatabaseUnavailable`` (503) and nothing of
it was committed.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog

from billing.database import DatabaseUnavailable
from billing.deliveries import DeliveryOutcome
from receiver.metrics import BATCH_SIZE, COMMIT_SECONDS
from schema.wire import Event

log = structlog.get_logger()
Outcome = DeliveryOutcome | Exception
Pending = tuple[Event, "asyncio.Future[DeliveryOutcome]"]


class GroupCommitter:
    def __init__(
        self,
        apply_batch: Callable[[Sequence[Event]], list[DeliveryOutcome]],
        *,
        max_batch: int = 512,
        writers: int = 1,
    ) -> None:
        self.apply_batch = apply_batch
        self.max_batch = max_batch
        self.writers = writers
        self.executor = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="group-commit")
        # What is waiting, and a future the idle writers await (set by the next arrival). A deque and one
        # shared future cost less per event than an asyncio.Queue's put and get.
        self._waiting: deque[Pending] = deque()
        self._arrival: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, event: Event) -> DeliveryOutcome:
        """The event's outcome, once the transaction holding it has committed."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._write_forever()) for _ in range(self.writers)]
        future: asyncio.Future[DeliveryOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, future))
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)
        return await future

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        waiting = self._waiting
        while True:
            while not waiting:
                if self._arrival is None or self._arrival.done():
                    self._arrival = loop.create_future()
                await self._arrival
            batch = [waiting.popleft() for _ in range(min(len(waiting), self.max_batch))]
            started = time.perf_counter()
            outcomes = await loop.run_in_executor(self.executor, self.apply_isolated, [e for e, _ in batch])
            COMMIT_SECONDS.observe(time.perf_counter() - started)
            BATCH_SIZE.observe(len(batch))
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # the client went away; its event is committed all the same
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def apply_isolated(self, events: Sequence[Event]) -> list[Outcome]:
        """Outcomes for a batch; a failing batch is split so that only the failing events fail."""
        try:
            return list(self.apply_batch(events))
        except DatabaseUnavailable as error:
            return [error] * len(events)
        except Exception as error:  # the database refused it, or a bug: either way the writer goes on
            if len(events) == 1:
                log.error("event_failed", event_id=events[0].event_id, exc_info=True)
                return [error]
            log.warning("batch_failed_retrying_one_by_one", size=len(events), error=repr(error))
            return [outcome for event in events for outcome in self.apply_isolated([event])]
