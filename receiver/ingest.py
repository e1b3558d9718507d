"""Hands parsed events to billing: one transaction per group of concurrent requests, off the event loop."""

import threading
from collections import Counter
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, Engine

from creditrelay.billing.deliveries import DeliveryOutcome, DeliveryStatus, charged_credits, deliver
from creditrelay.receiver.group_commit import GroupCommitter
from creditrelay.receiver.metrics import CREDITS_CHARGED, EVENTS
from creditrelay.schema.database import utc
from creditrelay.schema.tables import webhook_logs
from creditrelay.schema.transactions import connect, run_transaction
from creditrelay.schema.wire import Event

# an UPDATE that matches no row: it needs what any commit of a delivery needs (SQLite's write lock,
# MySQL's global intention lock, which FLUSH TABLES WITH READ LOCK holds back, a PostgreSQL server that is
# not read-only), waits for locks no longer than the lock timeout, and changes nothing
_NOTHING = webhook_logs.update().where(webhook_logs.c.id == 0).values(status=webhook_logs.c.status)
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
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._writer = threading.local()  # each writer thread holds one connection
        # SQLite has one writer at a time; MySQL overlaps one batch's round trips with the next batch's work.
        default = 1 if engine.dialect.name == "sqlite" else 2
        self.committer = GroupCommitter(self.ingest_batch, probe=self.probe_write, writers=writers or default)

    def ingest_batch(self, events: Sequence[Event]) -> list[DeliveryOutcome]:
        """Runs on a writer thread, in that thread's own connection; counts the committed outcomes."""
        now = utc(self.clock())
        connection = self._connection()
        outcomes = deliver(connection, events, now)
        for status, count in Counter(o.status for o in outcomes).items():
            _COUNTED[status].inc(count)
        if credits := charged_credits(events, outcomes):
            _CHARGED.inc(credits)
        return outcomes

    def probe_write(self) -> None:
        """On a writer thread, in its connection: a write transaction that writes nothing (health)."""
        run_transaction(self._connection(), lambda c: c.execute(_NOTHING), attempts=1)

    def _connection(self) -> Connection:
        connection: Connection | None = getattr(self._writer, "connection", None)
        if connection is None or connection.closed:
            connection = self._writer.connection = connect(self.engine)
        return connection

    async def ingest(self, event: Event) -> DeliveryOutcome:
        return await self.committer.submit(event)

    async def ingest_many(self, events: Sequence[Event]) -> list[DeliveryOutcome | BaseException]:
        return await self.committer.submit_many(events)
