"""schema/statements.py: values arrive byte for byte, however they are escaped or however many rows."""

from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema import inserts, statements
from creditrelay.schema.inserts import insert_new
from creditrelay.schema.statements import execute_many, fetch_in, insert_returning, returns_inserted
from creditrelay.schema.tables import usage_records, webhook_logs
from creditrelay.schema.transactions import run_transaction
from tests.support.database import Database

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901)
HOSTILE = [
    "it's",
    'a "quoted" \\ backslash \\\' and \\"',
    "nul \x00 byte, \x1a, \r\n, \t",
    "100% %s %(name)s %%",
    "ünïcødé 中文 🙂",
    "'); DROP TABLE users; --",
    "",
]


def log(event_id: str, payload: str) -> dict[str, Any]:
    return {"eventId": event_id, "eventType": "usage", "payload": payload, "payloadHash": "h", "status": "processed",
            "errorMsg": None, "processedAt": NOW, "createdAt": NOW}  # fmt: skip


def stored(database: Database) -> dict[str, tuple[str, datetime | None]]:
    query = sa.select(webhook_logs.c.eventId, webhook_logs.c.payload, webhook_logs.c.processedAt)
    with database.engine.connect() as connection:
        return {e: (p, at) for e, p, at in connection.execute(query)}


def insert(connection: Connection, rows: list[dict[str, Any]]) -> int:
    return execute_many(connection, "test_insert", lambda _: webhook_logs.insert(), rows)


@pytest.mark.parametrize("no_backslash_escapes", [False, True])
def test_hostile_text_round_trips_exactly(database: Database, no_backslash_escapes: bool) -> None:
    """Quotes, backslashes, NUL, percent signs and SQL in values are stored as given, also when MySQL
    runs with NO_BACKSLASH_ESCAPES (where pymysql's own escaping takes over)."""
    if no_backslash_escapes and database.kind != "mysql":
        pytest.skip("a MySQL sql_mode")
    hostile = _storable(database)
    rows = [log(f"e{i}", text) for i, text in enumerate(hostile)]

    def work(connection: Connection) -> int:
        if no_backslash_escapes:
            connection.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        written = insert(connection, rows[:3])
        found = fetch_in(
            connection,
            "test_find",
            lambda ids: sa.select(webhook_logs.c.payload).where(webhook_logs.c.payload.in_(ids)),
            hostile,
        )
        assert sorted(p for (p,) in found) == sorted(hostile[:3])
        if returns_inserted(connection.dialect):
            returned = insert_returning(connection, webhook_logs, rows[3:], ["eventId", "payload"])
            assert sorted(returned) == sorted((r["eventId"], r["payload"]) for r in rows[3:])
            written += len(returned)
        else:
            written += insert(connection, rows[3:])
        if no_backslash_escapes:
            connection.exec_driver_sql("SET SESSION sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')")
        return written

    assert run_transaction(database.engine, work) == len(hostile)
    assert stored(database) == {f"e{i}": (text, NOW) for i, text in enumerate(hostile)}
    assert database.count("users") == 0


def _storable(database: Database) -> list[str]:
    """The hostile texts this database can hold: PostgreSQL's text holds no NUL character (the edge refuses
    one in every field, on every database: tests/schema/test_hostile_input.py)."""
    return [text.replace("\x00", "") for text in HOSTILE] if database.kind == "postgresql" else HOSTILE


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_nul_character_is_refused_by_postgresql_not_cut(database: Database) -> None:
    with pytest.raises(sa.exc.DataError, match="NUL"):
        run_transaction(database.engine, lambda c: insert(c, [log("e0", "a \x00 b")]))
    assert database.count("webhook_logs") == 0


def test_large_batches_are_split_within_the_database_limits(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows beyond one statement's limit (bytes on MySQL, rows on SQLite; both made small here) go in
    several statements: every row written once, every id returned, duplicates still skipped."""
    monkeypatch.setattr(statements, "_MYSQL_STATEMENT_BYTES", 2_000)
    monkeypatch.setattr(statements, "_SQLITE_ROWS", 8)
    rows = [log(f"big{i:03}", "x" * (300 + i)) for i in range(40)]

    def work(connection: Connection) -> int:
        written = insert(connection, rows[:20])
        if returns_inserted(connection.dialect):
            returned = insert_returning(connection, webhook_logs, rows, ["eventId"])
            assert sorted(e for (e,) in returned) == [r["eventId"] for r in rows[20:]]
            return written + len(returned)
        return written + insert(connection, rows[20:])

    assert run_transaction(database.engine, work) == 40
    assert stored(database) == {r["eventId"]: (r["payload"], NOW) for r in rows}


def test_inserts_of_every_batch_size_write_each_row_once_in_few_statement_shapes(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 1 to 70 rows, half of them already stored: each insert returns exactly its new rows and
    stores them once. On SQLite a short statement is padded with copies of its last row (skipped by its
    unique key), so all these sizes run in at most seven statement shapes, which stay prepared."""
    with database.engine.connect() as connection:
        if not returns_inserted(connection.dialect):
            pytest.skip("the database cannot say which rows an insert wrote")
    shapes: set[str] = set()
    run = statements._run

    def recording(connection: Connection, sql: str, params: Any, *, many: bool = False) -> Any:
        if sql.startswith("INSERT"):
            shapes.add(sql)
        return run(connection, sql, params, many=many)

    monkeypatch.setattr(statements, "_run", recording)
    expected: dict[str, tuple[str, datetime | None]] = {}

    def store_new(rows: list[dict[str, Any]]) -> list[Any]:
        return run_transaction(database.engine, lambda c: insert_returning(c, webhook_logs, rows, ["eventId"]))

    for size in range(1, 71):
        rows = [log(f"s{size}-{i}", f"payload {size} {i}") for i in range(size)]
        store_new(rows[: size // 2])
        returned = store_new(rows)
        assert sorted(e for (e,) in returned) == sorted(r["eventId"] for r in rows[size // 2 :])
        expected |= {r["eventId"]: (r["payload"], NOW) for r in rows}
    assert stored(database) == expected
    if database.kind == "sqlite":
        assert len(shapes) <= 7


@pytest.mark.parametrize("returning", [True, False])
def test_an_insert_that_would_cut_a_value_is_refused_not_stored(
    database: Database, returning: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value too long for its column: MySQL's INSERT IGNORE would store it cut (and skip a duplicate);
    ours refuses the statement, with RETURNING (MariaDB) and with row counts (MySQL). PostgreSQL refuses it
    itself. SQLite stores it whole. Duplicates alone are still skipped quietly."""
    if not returning:
        monkeypatch.setattr(inserts, "returns_inserted", lambda _dialect: False)
    row = log("e-long", "p")
    row["eventId"] = "x" * 65  # the column holds 64

    def work(connection: Connection) -> int:
        insert_new(connection, webhook_logs, [log("e-dup", "p")], "eventId")
        insert_new(connection, webhook_logs, [log("e-dup", "p"), log("e-new", "p")], "eventId")
        return len(insert_new(connection, webhook_logs, [row, log("e-dup", "p")], "eventId"))

    if database.kind == "sqlite":
        assert run_transaction(database.engine, work) == 1
        assert database.count("webhook_logs", "eventId = :e", e="x" * 65) == 1
        return
    with pytest.raises(
        sa.exc.DataError, match="value too long" if database.kind == "postgresql" else "not stored whole"
    ):
        run_transaction(database.engine, work)
    assert database.count("webhook_logs") == 0  # the whole transaction rolled back


def test_mysql_sessions_are_strict(database: Database) -> None:
    """Every MySQL session runs with STRICT_ALL_TABLES, whatever the server's default."""
    if database.kind != "mysql":
        pytest.skip("a MySQL session setting")
    modes = str(database.scalar("SELECT @@SESSION.sql_mode")).split(",")
    assert "STRICT_ALL_TABLES" in modes


def test_a_row_skipped_for_a_broken_foreign_key_is_not_taken_for_a_duplicate(database: Database) -> None:
    """MySQL's INSERT IGNORE skips a row whose foreign key fails, with a warning: that row is refused, not
    reported as a usage charged before. SQLite's ON CONFLICT DO NOTHING never skips it in the first place."""
    row = {"usageKey": "evt:orphan", "userId": 999_999, "remoteKeyId": "1", "model": "m", "promptTokens": 0,
           "completionTokens": 0, "totalTokens": 0, "creditCost": 1, "source": "webhook", "usedAt": NOW,
           "createdAt": NOW}  # fmt: skip
    with pytest.raises((sa.exc.DataError, sa.exc.IntegrityError)):
        run_transaction(database.engine, lambda c: insert_new(c, usage_records, [row], "usageKey"))
    assert database.count("usage_records") == 0


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_postgresql_prepares_the_inserts_but_plans_everything_else_for_its_values(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prepared statement may run on one generic plan made from the statistics of its first runs: made on
    an empty table, a lookup by event id would scan the whole table for every batch until the next ANALYZE.
    The hot path's reads are never prepared; its inserts (and the per-row updates of ``executemany``, by a
    unique key) are, whatever the size of the numbers they carry (psycopg would type a small int as int2
    and a large one as int8, a statement of its own each). A plain insert of 1 to 70 rows goes as
    multi-row statements of power-of-two sizes, seven shapes in all."""
    shapes: set[str] = set()
    run = statements._run

    def recording(connection: Connection, sql: str, params: Any, *, many: bool = False) -> Any:
        assert not (many and sql.startswith("INSERT")), "a plain insert went row by row"
        shapes.add(sql) if sql.startswith("INSERT") else None
        return run(connection, sql, params, many=many)

    monkeypatch.setattr(statements, "_run", recording)

    def lookup(connection: Connection, event_ids: list[str]) -> list[Any]:
        build = lambda ids: sa.select(webhook_logs.c.eventId).where(webhook_logs.c.eventId.in_(ids))  # noqa: E731
        return fetch_in(connection, "test_prepared_lookup", build, event_ids)

    def work(connection: Connection) -> list[str]:
        written = 0
        for size in range(1, 71):
            rows = [log(f"p{size}-{i}", "x") for i in range(size)]
            assert lookup(connection, [r["eventId"] for r in rows]) == []
            written += execute_many(connection, "test_plain_insert", lambda _: webhook_logs.insert(), rows)
            execute_many(connection, "test_update", _status_by_id, [{"n": size**5, "s": "failed"}])  # 1 to 9 digits
        assert written == sum(range(1, 71))
        assert len(lookup(connection, ["p1-0", "p70-69"])) == 2
        prepared = connection.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars()
        return [" ".join(statement.split()[:3]) for statement in prepared]

    prepared = run_transaction(database.engine, work)
    assert len(shapes) == 7  # 1, 2, 4 … 64 rows
    assert 0 < prepared.count("INSERT INTO webhook_logs") <= 7
    assert prepared.count("UPDATE webhook_logs SET") == 1  # one statement, whatever the ids' sizes
    assert [statement for statement in prepared if statement.startswith("SELECT")] == []
    assert database.count("webhook_logs") == sum(range(1, 71))


def _status_by_id(_dialect: str) -> sa.Update:
    return webhook_logs.update().where(webhook_logs.c.id == sa.bindparam("n")).values(status=sa.bindparam("s"))
