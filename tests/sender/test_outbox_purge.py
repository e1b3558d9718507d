"""The outbox can always be cleaned: purges in bounded chunks at any size, the relay's own scheduled purge,
and the space a SQLite outbox gives back."""

import asyncio
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from creditrelay.schema.database import make_engine
from creditrelay.schema.signing import WebhookSecret
from creditrelay.sender.delivery import Signer
from creditrelay.sender.outbox import DEAD, DELIVERED, PENDING, PURGE_PAUSE, Outbox, outbox_attempts, outbox_events
from creditrelay.sender.relay import OutboxRelay, RelayConfig
from tests.support.database import Database
from tests.support.outbox import attempt_rows, bulk_insert, rows
from tests.support.scripted_receiver import scripted_receiver
from tests.support.signing import SECRET

T0 = datetime(2026, 5, 1, 12, 0, 0)
DAY = timedelta(days=1)
SIGNER = Signer(WebhookSecret.parse(SECRET))


def old_status(i: int) -> str:
    """Among old events, one in a thousand is still pending and one is dead."""
    return {7: PENDING, 9: DEAD}.get(i % 1000, DELIVERED)


@pytest.mark.slow  # hundreds of thousands of rows written, then purged, on each database
def test_a_purge_of_more_events_than_a_statement_may_name_succeeds(database: Database) -> None:
    """300,000 delivered events on SQLite, 70,000 on MySQL and PostgreSQL (past SQLite's and PostgreSQL's
    limits on one statement's parameters) are purged in bounded chunks, progress reported per chunk, with
    their attempts; pending, dead and young events and their attempts stay."""
    outbox = Outbox(database.engine)
    old = {"sqlite": 300_000, "mysql": 70_000, "postgresql": 70_000}[database.kind]
    bulk_insert(database.engine, outbox_events, rows(0, old, T0 - 10 * DAY, old_status))
    bulk_insert(database.engine, outbox_events, rows(old, 100, T0 - DAY, lambda i: (DELIVERED, PENDING)[i % 2]))
    kept = [f"e{i:07}" for i in range(old) if old_status(i) != DELIVERED] + [f"e{i:07}" for i in range(old, old + 100)]
    gone = [f"e{i:07}" for i in range(0, old, 100)]
    bulk_insert(database.engine, outbox_attempts, attempt_rows(gone + kept, T0))
    told: list[int] = []

    purged = outbox.purge([DELIVERED], T0 - 7 * DAY, progress=told.append, pause=0)

    assert purged == old - 2 * old // 1000
    assert sum(told) == purged
    assert max(told) <= 1000
    assert len(told) >= purged // 1000
    assert outbox.counts() == {PENDING: old // 1000 + 50, DELIVERED: 50, DEAD: old // 1000}
    assert database.count("outbox_attempts") == len(kept)


def test_a_purge_keeps_dead_events_unless_asked_and_never_takes_pending_ones(database: Database) -> None:
    """Delivered events past the cutoff go in chunks; dead ones only when named; a chunk boundary loses
    nothing; pending ones are refused outright."""
    outbox = Outbox(database.engine)
    bulk_insert(database.engine, outbox_events, rows(0, 25, T0 - 9 * DAY, lambda i: (DELIVERED, DEAD, PENDING)[i % 3]))
    bulk_insert(database.engine, outbox_events, rows(25, 5, T0))
    told: list[int] = []
    assert outbox.purge([DELIVERED], T0 - DAY, chunk=4, progress=told.append, pause=0) == 9
    assert all(0 <= count <= 4 for count in told)
    assert outbox.purge([DELIVERED, DEAD], T0 - DAY, chunk=4, pause=0) == 8
    assert outbox.counts() == {PENDING: 8, DELIVERED: 5, DEAD: 0}
    with pytest.raises(ValueError, match="never purged"):
        outbox.purge([DELIVERED, PENDING], T0)


def test_a_purge_reads_no_further_than_where_events_become_young(database: Database) -> None:
    """The walk ends with the first chunk that holds an event younger than the cutoff, so the recent part of
    a big outbox is never read; an old event enqueued behind a young one waits for a later purge. On SQLite
    the chunks are a pause apart, for the gateway's enqueues."""
    outbox = Outbox(database.engine)
    bulk_insert(database.engine, outbox_events, rows(0, 10, T0 - 9 * DAY))
    bulk_insert(database.engine, outbox_events, rows(10, 1, T0))
    bulk_insert(database.engine, outbox_events, rows(11, 9, T0 - 9 * DAY))
    bulk_insert(database.engine, outbox_events, rows(20, 100, T0))
    told: list[int] = []
    naps: list[float] = []
    assert outbox.purge([DELIVERED], T0 - DAY, chunk=5, progress=told.append, sleep=naps.append) == 14
    assert told == [5, 5, 4]
    assert naps == ([PURGE_PAUSE] * 2 if database.kind == "sqlite" else [])  # SQLite's writers take turns
    assert outbox.counts()[DELIVERED] == 1 + 5 + 100
    assert outbox.purge([DELIVERED], T0 + DAY, chunk=5, pause=0) == 106


def test_purges_running_at_once_are_harmless(database: Database) -> None:
    """Several relays purging one outbox at the same time delete each event once, and fail on nothing."""
    outbox = Outbox(database.engine)
    bulk_insert(database.engine, outbox_events, rows(0, 3000, T0 - 9 * DAY))

    async def together() -> list[int]:
        purge = lambda: outbox.purge([DELIVERED], T0, chunk=100, pause=0)  # noqa: E731
        return list(await asyncio.gather(*(asyncio.to_thread(purge) for _ in range(3))))

    assert sum(asyncio.run(together())) == 3000
    assert outbox.counts()[DELIVERED] == 0


def test_the_relay_purges_on_its_schedule(database: Database) -> None:
    """The relay purges delivered events past its retention when started and then every ``purge_every``
    seconds of its clock; dead events stay unless it is told to purge them."""
    outbox = Outbox(database.engine)
    bulk_insert(database.engine, outbox_events, rows(0, 3, T0 - 8 * DAY, lambda i: (DELIVERED, DEAD, PENDING)[i]))
    bulk_insert(database.engine, outbox_events, rows(3, 1, T0 - 7 * DAY + timedelta(minutes=30)))
    now = [T0.timestamp()]
    config = RelayConfig(url="http://127.0.0.1:9/", clock=lambda: now[0], purge_pause=0, purge_every=3600)
    relay = OutboxRelay(outbox, SIGNER, config)

    async def scenario() -> None:
        stop = asyncio.Event()
        first = relay.purge_if_due(stop)
        assert first is not None
        assert await first == 1
        now[0] += 40 * 60  # the young one is now past the retention, but a purge is not due
        assert relay.purge_if_due(stop) is None
        assert outbox.counts() == {PENDING: 1, DELIVERED: 1, DEAD: 1}
        now[0] += 21 * 60
        second = relay.purge_if_due(stop)
        assert second is not None
        assert await second == 1

    asyncio.run(scenario())
    assert outbox.counts() == {PENDING: 1, DELIVERED: 0, DEAD: 1}
    dead_too = OutboxRelay(outbox, SIGNER, RelayConfig("http://127.0.0.1:9/", purge_dead=True, clock=lambda: now[0]))
    assert asyncio.run(dead_too.purge_now(asyncio.Event())) == 1
    assert outbox.counts() == {PENDING: 1, DELIVERED: 0, DEAD: 0}


def test_a_failed_purge_is_counted_and_the_relay_goes_on(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A purge that raises is logged and counted; the relay keeps delivering, and the next purge comes on
    schedule and does its work."""
    outbox = Outbox(database.engine)
    outbox.enqueue([(f"e{i}", b'{"eventId": "e%d"}' % i) for i in range(3)], T0)
    real_chunk = outbox.purge_chunk
    failures = [RuntimeError("a bug in one purge")]

    def chunk_once_failing(*args: Any, **kwargs: Any) -> tuple[int, int | None]:
        if failures:
            raise failures.pop()
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(outbox, "purge_chunk", chunk_once_failing)
    now = [T0.timestamp() + 1]
    with scripted_receiver() as receiver:
        config = RelayConfig(
            url=receiver.url, clock=lambda: now[0], poll_interval=0.01, retention=0, purge_every=60, purge_pause=0
        )
        relay = OutboxRelay(outbox, SIGNER, config)

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            for _ in range(500):
                if outbox.counts()[DELIVERED] == 3 or task.done():
                    break
                await asyncio.sleep(0.01)
            now[0] += 61
            for _ in range(500):
                if sum(outbox.counts().values()) == 0 or task.done():
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await task

        asyncio.run(run())
    assert relay.failed_purges == 1
    assert outbox.counts() == {PENDING: 0, DELIVERED: 0, DEAD: 0}
    assert len(receiver.seen) == 3


def test_a_new_sqlite_outbox_gives_purged_space_back(tmp_path: Path) -> None:
    """A new SQLite outbox is made with incremental auto-vacuum; after a purge, its freed pages go back to
    the file system in steps, and the file shrinks."""
    path = tmp_path / "outbox.db"
    outbox = Outbox.open(f"sqlite:///{path}")
    with outbox.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental
    bulk_insert(outbox.engine, outbox_events, rows(0, 4000, T0 - 9 * DAY, body="x" * 2000))
    bulk_insert(outbox.engine, outbox_events, rows(4000, 10, T0))
    full = outbox.file_bytes()
    assert full is not None
    assert full > 4000 * 2000
    assert outbox.purge([DELIVERED], T0 - DAY, pause=0) == 4000
    steps = [outbox.reclaim_space(200) for _ in range(200)]
    assert steps[0] == 200
    assert steps[-1] == 0
    assert os.path.getsize(path) < full / 4
    assert outbox.counts()[DELIVERED] == 10


def test_reclaiming_space_elsewhere_is_nothing_to_do(database: Database) -> None:
    """MySQL and PostgreSQL reuse purged rows' space on their own; a SQLite database made without
    incremental auto-vacuum (the ledger's) gives nothing back until vacuumed."""
    outbox = Outbox(database.engine)
    bulk_insert(database.engine, outbox_events, rows(0, 50, T0 - 9 * DAY))
    assert outbox.purge([DELIVERED], T0, pause=0) == 50
    assert outbox.reclaim_space(100) == 0


def test_an_outbox_made_before_incremental_vacuum_keeps_working(tmp_path: Path) -> None:
    """An outbox whose tables exist already is opened as it is (its auto-vacuum changes only with VACUUM)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    from creditrelay.sender.outbox import metadata

    metadata.create_all(engine)
    engine.dispose()
    outbox = Outbox.open(url)
    with outbox.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 0
    outbox.vacuum()
    with outbox.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2
