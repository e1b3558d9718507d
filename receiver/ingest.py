"""Hands parsed events to billing: one transaction per group of concurrent requests, off the event loop."""

from collections import Counter
from collections.abc import Callable, Sequence

from sqlalchemy import Engine

from creditrelay.billing.deliveries import DeliveryOutcome, DeliveryStatus, charged_credits
from creditrelay.receiver.group_commit import GroupCommitter
from creditrelay.receiver.metrics import CREDITS_CHARGED, EVENTS
from creditrelay.receiver.writers import ThreadWriter, Writer
from creditrelay.schema.wire import Event

_COUNTED = {status: EVENTS.labels(status.value) for status in DeliveryStatus}
_CHARGED = CREDITS_CHARGED.labels("webhook")


class Ingestor:
    """Applies delivered events and answers only after their transaction has committed."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float],
        *,
        writers: int | None = None,
        writer: Writer | None = None,
    ) -> None:
        """``writer``: where batches are applied (by default on the writer threads, on ``engine``)."""
        self.writer = writer or ThreadWriter(engine, clock)
        # SQLite has one writer at a time; MySQL overlaps one batch's round trips with the next batch's work.
        default = 1 if engine.dialect.name == "sqlite" else 2
        self.committer = GroupCommitter(self.ingest_batch, probe=self.writer.probe, writers=writers or default)
        self.writer.start(self.committer.writers)

    def ingest_batch(self, events: Sequence[Event]) -> list[DeliveryOutcome]:
        """Runs on a writer thread; counts the committed outcomes (here, in the worker that serves /metrics)."""
        outcomes = self.writer.deliver(events)
        for status, count in Counter(o.status for o in outcomes).items():
            _COUNTED[status].inc(count)
        if credits := charged_credits(events, outcomes):
            _CHARGED.inc(credits)
        return outcomes

    async def ingest(self, event: Event) -> DeliveryOutcome:
        return await self.committer.submit(event)

    async def ingest_many(self, events: Sequence[Event]) -> list[DeliveryOutcome | BaseException]:
        return await self.committer.submit_many(events)
