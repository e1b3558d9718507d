"""Hands parsed events to billing: one transaction per group of concurrent requests, off the event loop."""

from collections.abc import Callable, Sequence

from sqlalchemy import Engine

from billing.database import run_transaction
from billing.deliveries import DeliveryOutcome, record_deliveries
from receiver.group_commit import GroupCommitter
from schema.database import utc
from schema.wire import Event


class Ingestor:
    """Applies delivered events and answers only after their transaction has committed."""

    def __init__(self, engine: Engine, clock: Callable[[], float], *, writers: int | None = None) -> None:
        self.engine = engine
        self.clock = clock
        # SQLite has one writer at a time; MySQL overlaps one batch's round trips with the next batch's work.
        default = 1 if engine.dialect.name == "sqlite" else 2
        self.committer = GroupCommitter(self.ingest_batch, writers=writers or default)

    def ingest_batch(self, events: Sequence[Event]) -> list[DeliveryOutcome]:
        return run_transaction(self.engine, lambda c: record_deliveries(c, events, utc(self.clock())))

    async def ingest(self, event: Event) -> DeliveryOutcome:
        return await self.committer.submit(event)
