"""billing/log_queries.py on every database: each filter's pages, followed older to the first delivery and
newer back to the newest, hold exactly the rows the filter selects, once each, in its order; the failed
events of a filter run again a chunk per transaction, up to a limit; and each filter reads an index."""

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Connection, event

from creditrelay.billing.accounts import link_key, unlink_key
from creditrelay.billing.deliveries import deliver
from creditrelay.billing.log_queries import LogFilter, find_logs, log_usages, replay_failed
from creditrelay.schema.tables import webhook_logs
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.ledger import NOW, in_transaction
from tests.support.receiver import OPENING, add_user
from tests.support.signing import encode, usage_event


def _events(database: Database) -> tuple[int, int]:
    """60 deliveries over 3 minutes, in batches whose clocks step back now and then (two writers' commits
    interleave), of keys 1 and 2 (alice), 3 (bob), k-x (nobody: failed) and pings (ignored)."""
    alice = add_user(database.engine, "alice@example.com", key="1")
    bob = add_user(database.engine, "bob@example.com", key="3")
    in_transaction(database, lambda c: link_key(c, "2", alice, NOW))
    rng = random.Random(5)
    keys = ["1", "2", "3", "k-x", None]
    for batch in range(12):
        at = NOW + timedelta(seconds=15 * batch - (20 if batch % 4 == 1 else 0))  # batch 1 before the first
        events = []
        for i in range(5):
            key = keys[rng.randrange(5)]
            number = batch * 5 + i
            body = (
                {"eventId": f"e{number:03d}", "eventType": "ping", "timestamp": 1}
                if key is None
                else usage_event(f"e{number:03d}", cost=number, key=key)
            )
            events.append(parse_event(encode(body)))
        deliver(database.engine, events, at)
    return alice, bob


def _all(database: Database) -> list[Any]:
    return database.rows("SELECT id, eventId, status, remoteKeyId, createdAt FROM webhook_logs ORDER BY id")


def _pages(database: Database, wanted: LogFilter, limit: int = 7) -> tuple[list[int], list[int]]:
    """The ids of every page followed older from the first, then newer from the oldest (each page's rows
    newest first)."""
    down: list[int] = []
    page = in_transaction(database, lambda c: find_logs(c, wanted, limit))
    seen = 0
    while True:
        down += [log.id for log in page.logs]
        seen += 1
        assert seen < 100
        if page.older is None:
            break
        older = page.older
        page = in_transaction(database, partial(find_logs, wanted=wanted, limit=limit, before=older))
    up: list[int] = []
    page = in_transaction(database, lambda c: find_logs(c, wanted, limit, after=0))
    while True:
        up = [log.id for log in page.logs] + up
        if page.newer is None:
            break
        newer = page.newer
        page = in_transaction(database, partial(find_logs, wanted=wanted, limit=limit, after=newer))
    return down, up


FILTERS: list[tuple[str, Callable[[int, int], LogFilter], Callable[[Any, int, int], bool], bool]] = [
    # name, the filter, which rows it selects, whether its order is by arrival (else by id)
    ("everything", lambda a, b: LogFilter(), lambda r, a, b: True, False),
    ("failed", lambda a, b: LogFilter(status="failed"), lambda r, a, b: r.status == "failed", True),
    ("processed", lambda a, b: LogFilter(status="processed"), lambda r, a, b: r.status == "processed", True),
    (
        "a minute",
        lambda a, b: LogFilter(since=NOW + timedelta(seconds=30), until=NOW + timedelta(seconds=90)),
        lambda r, a, b: NOW + timedelta(seconds=30) <= _at(r) <= NOW + timedelta(seconds=90),
        True,
    ),
    ("key 1", lambda a, b: LogFilter(key="1"), lambda r, a, b: r.remoteKeyId == "1", False),
    ("key k-x", lambda a, b: LogFilter(key="k-x"), lambda r, a, b: r.remoteKeyId == "k-x", False),
    ("alice", lambda a, b: LogFilter(user_id=a), lambda r, a, b: r.remoteKeyId in ("1", "2"), False),
    (
        "alice's key 3",
        lambda a, b: LogFilter(key="3", user_id=a),
        lambda r, a, b: False,
        False,
    ),
    (
        "bob, processed, a minute",
        lambda a, b: LogFilter(status="processed", user_id=b, since=NOW + timedelta(seconds=30)),
        lambda r, a, b: r.remoteKeyId == "3" and r.status == "processed" and _at(r) >= NOW + timedelta(seconds=30),
        False,
    ),
]


def _at(row: Any) -> datetime:
    value = row.createdAt
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@pytest.mark.parametrize("name", [f[0] for f in FILTERS])
def test_every_page_of_a_filter_followed_both_ways_holds_its_rows_once(database: Database, name: str) -> None:
    """Pages of 7 followed to the first and back hold exactly the rows the filter selects, newest first."""
    alice, bob = _events(database)
    _, make, selects, by_arrival = next(f for f in FILTERS if f[0] == name)
    rows = [r for r in _all(database) if selects(r, alice, bob)]
    if by_arrival:
        rows.sort(key=lambda r: (_at(r), r.id), reverse=True)
    else:
        rows.reverse()
    down, up = _pages(database, make(alice, bob))
    assert down == [r.id for r in rows]
    assert up == down


def test_the_arrival_order_differs_from_the_id_order_here(database: Database) -> None:
    """The fixture's clocks step back (as two writers' commits interleave), so the arrival-ordered filters
    above are tested on an order that is not the ids'."""
    _events(database)
    rows = _all(database)
    assert sorted(rows, key=lambda r: (_at(r), r.id)) != rows


def test_an_event_id_finds_its_delivery_within_the_other_filters(database: Database) -> None:
    alice, bob = _events(database)
    row = next(r for r in _all(database) if r.remoteKeyId == "3")
    found = in_transaction(database, lambda c: find_logs(c, LogFilter(event_id=row.eventId)))
    assert [log.id for log in found.logs] == [row.id]
    assert (found.older, found.newer) == (None, None)
    assert in_transaction(database, lambda c: find_logs(c, LogFilter(event_id=row.eventId, user_id=bob))).logs
    assert not in_transaction(database, lambda c: find_logs(c, LogFilter(event_id=row.eventId, user_id=alice))).logs
    assert not in_transaction(database, lambda c: find_logs(c, LogFilter(event_id="E001"))).logs  # exact


def test_a_page_continues_after_its_cursor_row_was_cleaned_up(database: Database) -> None:
    """Cleanup may delete the row a page's link names: the next page starts from its neighbour by id (where
    it would have, as here, when arrival and ids agree)."""
    add_user(database.engine, "alice@example.com", key="1")
    for second in range(20):
        deliver(database.engine, [parse_event(encode(usage_event(f"s{second}")))], NOW + timedelta(seconds=second))
    wanted = LogFilter(status="processed")
    first = in_transaction(database, lambda c: find_logs(c, wanted, 5))
    expected = in_transaction(database, lambda c: find_logs(c, wanted, 5, before=first.older))
    assert first.older is not None
    database.execute("DELETE FROM webhook_logs WHERE id = :id", id=first.older)
    again = in_transaction(database, lambda c: find_logs(c, wanted, 5, before=first.older))
    assert [log.id for log in again.logs] == [log.id for log in expected.logs]


def test_each_row_says_its_key_user_model_and_cost(database: Database) -> None:
    alice, _ = _events(database)
    page = in_transaction(database, lambda c: find_logs(c, LogFilter(), 60))
    usages = in_transaction(database, lambda c: log_usages(c, page.logs))
    for log in page.logs:
        usage = usages[log.id]
        if log.event_type == "ping":
            assert (usage.key, usage.model, usage.cost) == ("", "", "")
        else:
            assert usage.key == log.remote_key_id
            assert usage.model == "gpt-4"
            assert usage.cost == str(int(log.event_id[1:]))
            assert (usage.user_id == alice) == (usage.key in ("1", "2"))


def test_the_failed_events_of_a_filter_run_again_a_chunk_at_a_time(database: Database) -> None:
    """Linked now, a key's failed events are charged: in chunks (several transactions), oldest first, at most
    ``limit`` at a time (the rest say there is more), and none twice."""
    alice = add_user(database.engine, "alice@example.com", key="1")
    batch = [parse_event(encode(usage_event(f"lost-{i:02d}", cost=2, key="k-new"))) for i in range(25)]
    other = [parse_event(encode(usage_event(f"other-{i}", cost=7, key="k-other"))) for i in range(3)]
    deliver(database.engine, batch + other, NOW)
    in_transaction(database, lambda c: link_key(c, "k-new", alice, NOW))
    first = replay_failed(database.engine, LogFilter(key="k-new"), NOW, limit=20)
    assert (dict(first.outcomes), first.more) == ({"charged": 20}, True)
    assert database.count("webhook_logs", "status = 'failed' AND remoteKeyId = 'k-new'") == 5
    second = replay_failed(database.engine, LogFilter(key="k-new"), NOW, limit=20)
    assert (dict(second.outcomes), second.more) == ({"charged": 5}, False)
    assert replay_failed(database.engine, LogFilter(key="k-new"), NOW).replayed == 0
    assert int(database.scalar("SELECT balance FROM users WHERE id = :u", u=alice)) == OPENING - 50
    assert database.count("webhook_logs", "status = 'failed'") == 3  # the other key's wait


def test_a_replay_by_time_takes_failed_rows_that_arrived_before_the_first_id(database: Database) -> None:
    """Two writers' clocks: the row with the lowest id arrived after another one (a higher id, an earlier
    time). A replay of the failed events since a time charges both; neither is left unpaid."""
    alice = add_user(database.engine, "alice@example.com", key="1")
    deliver(database.engine, [parse_event(encode(usage_event("late-clock", cost=3, key="k-new")))], NOW)
    early = [parse_event(encode(usage_event("early-clock", cost=4, key="k-new")))]
    deliver(database.engine, early, NOW - timedelta(seconds=30))
    in_transaction(database, lambda c: link_key(c, "k-new", alice, NOW))
    report = replay_failed(database.engine, LogFilter(since=NOW - timedelta(minutes=5)), NOW)
    assert dict(report.outcomes) == {"charged": 2}
    assert database.count("webhook_logs", "status = 'failed'") == 0
    assert int(database.scalar("SELECT balance FROM users WHERE id = :u", u=alice)) == OPENING - 7


def test_a_replay_of_still_unknown_keys_says_so_and_ends(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter's failed events that still fail are counted unbillable once each; the replay ends (chunks
    of 4 here) instead of running the same rows again."""
    import creditrelay.billing.log_queries as log_queries

    monkeypatch.setattr(log_queries, "CHUNK", 4)
    add_user(database.engine, "alice@example.com", key="1")
    deliver(database.engine, [parse_event(encode(usage_event(f"x-{i}", key="k-x"))) for i in range(10)], NOW)
    report = replay_failed(database.engine, LogFilter(since=NOW - timedelta(minutes=1)), NOW)
    assert (dict(report.outcomes), report.more) == ({"unbillable": 10}, False)


def test_an_unlinked_key_keeps_its_deliveries_under_the_key_not_the_user(database: Database) -> None:
    """A user's deliveries are those of the keys that bill them now."""
    alice = add_user(database.engine, "alice@example.com", key="1")
    deliver(database.engine, [parse_event(encode(usage_event("a", key="1")))], NOW)
    assert len(in_transaction(database, lambda c: find_logs(c, LogFilter(user_id=alice))).logs) == 1
    in_transaction(database, lambda c: unlink_key(c, "1"))
    assert in_transaction(database, lambda c: find_logs(c, LogFilter(user_id=alice))).logs == []
    assert len(in_transaction(database, lambda c: find_logs(c, LogFilter(key="1"))).logs) == 1


PLANS = {
    # filter -> the index its page reads (the databases name them alike)
    "a key's failed": ("ix_webhook_logs_remoteKeyId_status_id", LogFilter(key="k7", status="failed")),
    "a key's": ("ix_webhook_logs_remoteKeyId_status_id", LogFilter(key="k7")),
    "failed": ("ix_webhook_logs_status_createdAt", LogFilter(status="failed")),
    "an old minute": (
        "ix_webhook_logs_createdAt",
        LogFilter(since=NOW + timedelta(seconds=60), until=NOW + timedelta(seconds=120)),
    ),
}


def _many(database: Database, count: int = 4000) -> None:
    """``count`` deliveries a second apart over 100 keys: 98 % processed, 1 % failed, 1 % ignored, but a
    tenth of key k7's failed."""
    rng = random.Random(3)
    rows = []
    for i in range(count):
        key = "k7" if i % 40 == 0 else f"k{rng.randrange(100)}"
        status = "failed" if i % 40 == 0 else rng.choice(["processed"] * 98 + ["failed", "ignored"])
        rows.append({
            "eventId": f"m{i}", "eventType": "usage", "payload": "{}", "payloadHash": "h", "remoteKeyId": key,
            "status": status, "createdAt": NOW + timedelta(seconds=i),
        })  # fmt: skip
    in_transaction(database, lambda c: c.execute(webhook_logs.insert(), rows))
    database.execute(
        {"mysql": "ANALYZE TABLE webhook_logs", "postgresql": "ANALYZE webhook_logs"}.get(database.kind, "ANALYZE")
    )


def _selects(database: Database, work: Callable[[Connection], object]) -> list[tuple[str, Any]]:
    """The SELECT statements ``work`` runs, with their parameters."""
    captured: list[tuple[str, Any]] = []

    def remember(_c: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", remember)
    try:
        in_transaction(database, work)
    finally:
        event.remove(database.engine, "before_cursor_execute", remember)
    return captured


def _plan(database: Database, statement: str, parameters: Any) -> list[str]:
    """The database's plan of a statement, a step a line: SQLite's details; MySQL's table, access type and
    key; PostgreSQL's plan lines."""
    prefix = "EXPLAIN QUERY PLAN " if database.kind == "sqlite" else "EXPLAIN "
    with database.engine.connect() as connection:
        rows = connection.exec_driver_sql(prefix + statement, parameters).mappings().all()
    if database.kind == "sqlite":
        return [str(row["detail"]) for row in rows]
    if database.kind == "postgresql":
        return [str(row["QUERY PLAN"]).strip() for row in rows]
    return [f"{row['table']} {row['type']} {row['key']}" for row in rows]


def _scans(database: Database, plan: list[str]) -> bool:
    """Whether a plan reads the whole table (SQLite: a SCAN without an index; MySQL: access type ALL;
    PostgreSQL: a sequential scan)."""
    if database.kind == "sqlite":
        return "SCAN webhook_logs" in plan
    if database.kind == "postgresql":
        return any(step.startswith(("Seq Scan on webhook_logs", "->  Seq Scan on webhook_logs")) for step in plan)
    return "webhook_logs ALL None" in plan


@pytest.mark.parametrize("name", list(PLANS))
def test_each_filter_reads_a_range_of_an_index(database: Database, name: str) -> None:
    """Every statement a filtered page runs, first page and next, is planned along the filter's index, never
    as a scan of the table (the database's own EXPLAIN; the timings are make scale's)."""
    index, wanted = PLANS[name]
    _many(database)
    first = in_transaction(database, lambda c: find_logs(c, wanted, 2))
    assert first.older is not None

    def pages(connection: Connection) -> None:
        find_logs(connection, wanted, 2)
        find_logs(connection, wanted, 2, before=first.older)

    plans = [_plan(database, statement, parameters) for statement, parameters in _selects(database, pages)]
    assert any(index in step for plan in plans for step in plan), plans
    assert not any(_scans(database, plan) for plan in plans), plans
