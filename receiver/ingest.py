"""Hands parsed events to billing, one transaction per unit of work, off the event loop."""

from collections.abc import Callable, Sequence

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from billing.database import run_transaction
from billing.deliveries import DeliveryOutcome, record_deliveries
from schema.database import utc
from schema.wire import Event


class Ingestor:
    """Applies delivered events and answers only after their transaction has committed."""

    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock

    def ingest_batch(self, events: Sequence[Event]) -> list[DeliveryOutcome]:
        return run_transaction(self.engine, lambda c: record_deliveries(c, events, utc(self.clock())))

    async def ingest(self, event: Event) -> DeliveryOutcome:
        outcomes = await run_in_threadpool(self.ingest_batch, [event])
        return outcomes[0]
