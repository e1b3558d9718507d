"""The outbox's purge at scale: how long it takes, and the space before and after (prints figures; asserts
nothing about timing).

For each database: ``--events`` delivered events older than the retention (each with one attempt, bodies
as the sidecar stores them) and 1 % young ones, written straight through Core. Then:

- **SQLite, a new outbox** (incremental auto-vacuum): the relay's own purge (``purge_now``, with its pauses)
  while a gateway thread enqueues an event every 10 ms (its slowest enqueue is printed), then the freed
  pages given back; the file's size at each step.
- **SQLite, an outbox made before** (no auto-vacuum): ``Outbox.purge`` (what ``creditrelay outbox purge``
  runs, without the relay's pauses) with its chunks timed and the same gateway thread beside it, the file
  (which keeps its pages), then ``Outbox.vacuum`` (``--vacuum``).
- **PostgreSQL / MySQL** (``--postgres-url``, ``--mysql-url``: a database that is created anew): the purge,
  and the tables' size before and after (the space stays, reused by new rows).

    .venv/bin/python scripts/outbox_purge_bench.py [--events 1000000] [--postgres-url URL] [--mysql-url URL]
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from creditrelay.schema.database import make_engine, utc
from creditrelay.schema.signing import WebhookSecret
from creditrelay.schema.statements import insert_all
from creditrelay.sender.delivery import Signer
from creditrelay.sender.events import encode_event, usage_event
from creditrelay.sender.outbox import DELIVERED, Outbox, metadata, outbox_attempts, outbox_events
from creditrelay.sender.relay import OutboxRelay, RelayConfig
from scripts.databases import recreate

CHUNK = 20_000
DAY = timedelta(days=1)
SNIPPET = '{"success":true,"message":"Event processed successfully","eventId":"%s"}'


def body(i: int) -> str:
    event = usage_event(remote_key_id=1000 + i % 500, model="gpt-4o-mini", credit_cost=3 + i % 40,
                        prompt_tokens=900 + i % 300, completion_tokens=120 + i % 90, request_id=f"req-{i:09}",
                        event_id=f"evt-{i:09}")  # fmt: skip
    return encode_event(event).decode()


def fill(engine: sa.Engine, events: int, now: float) -> float:
    """``events`` delivered ten days ago and 1 % delivered now, each with its attempt; seconds taken."""
    started = time.monotonic()
    young = events // 100

    def made(first: int, count: int) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        for i in range(first, first + count):
            at = utc(now - (0 if i >= events else 10 * 86400 - i * 0.01))
            event_id = f"evt-{i:09}"
            yield (
                {"eventId": event_id, "body": body(i), "status": DELIVERED, "attempts": 1, "nextAttemptAt": at,
                 "createdAt": at, "deliveredAt": at},
                {"eventId": event_id, "attemptedAt": at, "verdict": "delivered", "statusCode": 200,
                 "latencyMs": 4, "snippet": SNIPPET % event_id},
            )  # fmt: skip

    for first in range(0, events + young, CHUNK):
        pairs = list(made(first, min(CHUNK, events + young - first)))
        with engine.begin() as connection:
            insert_all(connection, outbox_events, [event for event, _ in pairs])
            insert_all(connection, outbox_attempts, [attempt for _, attempt in pairs])
    return time.monotonic() - started


def sqlite_bytes(path: Path) -> str:
    wal = Path(f"{path}-wal")
    return f"{mb(path.stat().st_size)} (+ WAL {mb(wal.stat().st_size if wal.exists() else 0)})"


def mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


class Gateway:
    """A thread enqueueing one event every 10 ms, as a gateway does, timing each enqueue."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox, self.waits, self.failed = outbox, list[float](), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.01):
            started = time.perf_counter()
            try:
                self.outbox.enqueue([(f"gw-{i}", b"{}")])
            except Exception:  # noqa: BLE001 - a refused enqueue is what is counted here
                self.failed += 1
            self.waits.append(time.perf_counter() - started)
            i += 1

    def __enter__(self) -> "Gateway":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        waits = sorted(self.waits) or [0.0]
        p99 = waits[int(len(waits) * 0.99)]
        return (f"{len(self.waits)} enqueues, median {statistics.median(waits) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
                f" slowest {waits[-1] * 1000:.0f} ms, failed {self.failed}")  # fmt: skip


def new_sqlite_outbox(events: int, directory: Path) -> None:
    path = directory / "new-outbox.db"
    outbox = Outbox.open(f"sqlite:///{path}")
    now = time.time()
    print(f"\nSQLite, a new outbox (incremental auto-vacuum): {events:,} old delivered events, 1 % young")
    print(f"  filled in {fill(outbox.engine, events, now):.0f} s: {sqlite_bytes(path)}")
    full = outbox.file_bytes() or 0
    relay = OutboxRelay(outbox, Signer(WebhookSecret.parse("x" * 32)), RelayConfig("http://127.0.0.1:9/"))
    with Gateway(outbox) as gateway:
        started = time.monotonic()
        purged = asyncio.run(relay.purge_now(asyncio.Event()))  # the relay's own: purge, then give pages back
        took = time.monotonic() - started
    print(f"  the relay's purge: {purged:,} events and their pages in {took:.1f} s: {sqlite_bytes(path)}")
    print(f"  meanwhile the gateway: {gateway.summary()}")
    print(f"  given back: {mb((full - (outbox.file_bytes() or 0)) / events * 1e6)} per million events")


def old_sqlite_outbox(events: int, directory: Path) -> None:
    path = directory / "old-outbox.db"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    metadata.create_all(engine)  # as outboxes were made before incremental auto-vacuum
    now = time.time()
    print(f"\nSQLite, an outbox made before (no auto-vacuum): {events:,} old delivered events, 1 % young")
    print(f"  filled in {fill(engine, events, now):.0f} s: {sqlite_bytes(path)}")
    engine.dispose()
    outbox = Outbox.open(url)
    full = outbox.file_bytes() or 0
    chunks: list[float] = []
    last = [time.perf_counter()]

    def told(_count: int) -> None:
        chunks.append(time.perf_counter() - last[0])
        last[0] = time.perf_counter()

    with Gateway(outbox) as gateway:
        started = time.monotonic()
        purged = outbox.purge([DELIVERED], utc(now) - 7 * DAY, progress=told)
        took = time.monotonic() - started
    median, slowest = statistics.median(chunks) * 1000, max(chunks) * 1000
    print(f"  outbox purge: {purged:,} events in {took:.1f} s, {len(chunks)} chunks (median {median:.1f} ms,"
          f" slowest {slowest:.0f} ms): {sqlite_bytes(path)}")  # fmt: skip
    print(f"  meanwhile the gateway: {gateway.summary()}")
    started = time.monotonic()
    outbox.vacuum()
    print(f"  outbox purge --vacuum's VACUUM: {time.monotonic() - started:.1f} s: {sqlite_bytes(path)}")
    print(f"  the purged events took {mb((full - (outbox.file_bytes() or 0)) / events * 1e6)} per million")


def server(url: str, events: int) -> None:
    engine = make_engine(recreate(sa.make_url(url)))
    metadata.create_all(engine)
    outbox = Outbox(engine)
    name = engine.dialect.name
    now = time.time()
    print(f"\n{name}: {events:,} old delivered events, 1 % young")
    print(f"  filled in {fill(engine, events, now):.0f} s: {table_bytes(engine)}")
    started = time.monotonic()
    purged = outbox.purge([DELIVERED], utc(now) - 7 * DAY)
    print(f"  outbox purge: {purged:,} events in {time.monotonic() - started:.1f} s: {table_bytes(engine)}")
    engine.dispose()


def table_bytes(engine: sa.Engine) -> str:
    """The outbox tables' size on disk: PostgreSQL's relations, or InnoDB's data and indexes (of which
    ``data_free`` is free for new rows), counted afresh. Both are analyzed first, as autovacuum (off on a
    test server) or InnoDB would have done by the time an outbox this size is purged: without statistics,
    PostgreSQL plans each chunk's delete of attempts as a read of the whole table."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE outbox_events, outbox_attempts"))  # autovacuum may be off here
            total = connection.execute(sa.text(
                "SELECT pg_total_relation_size('outbox_events') + pg_total_relation_size('outbox_attempts')"
            )).scalar_one()  # fmt: skip
            return f"tables {mb(float(total))}"
        connection.execute(sa.text("ANALYZE TABLE outbox_events, outbox_attempts")).all()
        used, free = connection.execute(sa.text(
            "SELECT SUM(data_length + index_length), SUM(data_free) FROM information_schema.TABLES"
            " WHERE table_schema = DATABASE() AND table_name IN ('outbox_events', 'outbox_attempts')"
        )).one()  # fmt: skip
    return f"tables {mb(float(used))} in use, {mb(float(free))} free"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="old delivered events (default: 1,000,000)")
    parser.add_argument("--postgres-url", help="a PostgreSQL database to create anew and fill")
    parser.add_argument("--mysql-url", help="a MySQL/MariaDB database to create anew and fill")
    parser.add_argument("--skip-sqlite", action="store_true", help="only the servers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="outbox-purge-") as directory:
        if not args.skip_sqlite:
            new_sqlite_outbox(args.events, Path(directory))
            old_sqlite_outbox(args.events, Path(directory))
    for url in (args.postgres_url, args.mysql_url):
        if url:
            server(url, args.events)
    print(f"\n(cpu: {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
