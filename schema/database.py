"""Engines for the two supported databases, and the one place their differences are spelled out.

SQLite (the embedded default): WAL journal, ``synchronous=FULL`` so a commit is on disk before it returns,
foreign keys on, and every transaction ``BEGIN IMMEDIATE`` so writers queue on the busy timeout instead
of failing on a lock upgrade. MySQL/MariaDB through pymysql: ``READ COMMITTED`` (no gap locks; reads see
the latest commit), UTC sessions, utf8mb4, stale pooled connections replaced.

Billing's ledger and the sender's outbox both use these engines.
"""

import sqlite3
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.sql.compiler import SQLCompiler

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")  # naive UTC, microseconds
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")  # a 64 KiB body does not fit MySQL's TEXT


def utc(seconds: float) -> datetime:
    """Unix seconds as the naive UTC datetime every table stores."""
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


# Identifiers compare byte for byte on MySQL, as they do on SQLite.
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def make_engine(url: URL | str, *, busy_timeout_ms: int = 5000, pool_size: int = 8) -> Engine:
    url = sa.make_url(url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout_ms)
    return sa.create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=3600,
        connect_args={"charset": "utf8mb4", "init_command": "SET time_zone = '+00:00'", "connect_timeout": 5},
    )


def _sqlite_engine(url: URL, busy_timeout_ms: int) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def insert_ignoring_duplicates(table: sa.Table, dialect_name: str) -> sa.Insert:
    """An INSERT that skips rows whose unique keys already exist; ``rowcount`` counts the rows written."""
    if dialect_name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return mysql.insert(table).prefix_with("IGNORE")


def returns_inserted(dialect: sa.Dialect) -> bool:
    """Whether an ``INSERT`` can say which rows it wrote (``RETURNING``): SQLite 3.35+ and MariaDB 10.5+
    can, MySQL cannot."""
    if dialect.name == "sqlite":
        return sqlite3.sqlite_version_info >= (3, 35)
    version = dialect.server_version_info or ()
    return bool(getattr(dialect, "is_mariadb", False)) and tuple(version[:2]) >= (10, 5)


def insert_returning(
    connection: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], returning: Sequence[str]
) -> list[Any]:
    """One multi-row ``INSERT`` that skips rows whose unique keys exist, returning the ``returning`` columns
    of the rows it wrote (the database must ``returns_inserted``). Every row has the same keys.

    The rows are padded to a power of two with copies of the last one — a copy meets the same unique key,
    so it is skipped — and the statement is compiled once per dialect, column set and padded size, with
    positional parameters, so a batch's values go over as one flat list (a batch's ``now`` formatted once).
    """
    if not rows:
        return []
    dialect = connection.dialect
    padded_rows = padded(rows)
    key = ("insert_returning", table.name, dialect.name, tuple(rows[0]), len(padded_rows), tuple(returning))
    entry = _returning.get(key)
    if entry is None:
        entry = _returning[key] = _compile_returning(table, dialect, list(rows[0]), len(padded_rows), returning)
    sql, columns, processors = entry
    values: list[Any] = []
    for row in _convert(padded_rows, True, [(c, processors.get(c)) for c in columns]):
        values.extend(row)
    return list(_run(connection, sql, values).fetchall())


_returning: dict[tuple[Hashable, ...], tuple[str, list[str], dict[str, "_Processor"]]] = {}


def _compile_returning(
    table: sa.Table, dialect: sa.Dialect, columns: list[str], count: int, returning: Sequence[str]
) -> tuple[str, list[str], dict[str, "_Processor"]]:
    rows = [{c: sa.bindparam(f"{c}__{i}", type_=table.c[c].type) for c in columns} for i in range(count)]
    statement = insert_ignoring_duplicates(table, dialect.name).values(rows)
    compiled = statement.compile(dialect=_positional(dialect))
    assert isinstance(compiled, SQLCompiler)
    assert compiled.positiontup is not None
    order = [name.rpartition("__")[0] for name in compiled.positiontup[: len(columns)]]
    assert compiled.positiontup == [f"{c}__{i}" for i in range(count) for c in order], "values are row by row"
    processors = {c: _processor(table.c[c].type, dialect) for c in order}
    quote = dialect.identifier_preparer.quote
    return f"{compiled} RETURNING {', '.join(quote(c) for c in returning)}", order, processors


_Processor = Callable[[Any], Any] | None  # a type's bind processor for the dialect
_Compiled = tuple[str, bool, list[tuple[str, _Processor]]]
_compiled: dict[tuple[Hashable, ...], _Compiled] = {}


def _positional(dialect: sa.Dialect) -> sa.Dialect:
    """The dialect to compile with: parameters by position (pymysql takes "%s" as well as named ones), so
    values go to the driver as tuples, not a dict per row."""
    if dialect.positional:
        return dialect
    dialect_class = cast(type[DefaultDialect], type(dialect))
    return dialect_class(paramstyle="format")


def _compile(statement: sa.ClauseElement, dialect: sa.Dialect, keys: Sequence[str]) -> _Compiled:
    compiled = statement.compile(dialect=_positional(dialect), column_keys=list(keys))
    assert isinstance(compiled, SQLCompiler)
    binds = compiled.binds
    order = compiled.positiontup if compiled.positional and compiled.positiontup else list(binds)
    processors: list[tuple[str, _Processor]] = [(name, _processor(binds[name].type, dialect)) for name in order]
    return str(compiled), bool(compiled.positional), processors


def _mysql_datetime(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")


def _processor(kind: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> _Processor:
    """The type's bind processor; on MySQL a datetime goes over as its literal text, which pymysql escapes
    several times faster than a datetime object (and the batch's ``now`` is formatted once)."""
    if dialect.name == "mysql" and isinstance(kind, sa.DateTime):
        return _mysql_datetime
    return kind.dialect_impl(dialect).bind_processor(dialect)


def _run(connection: Connection, sql: str, params: Any, *, many: bool = False) -> Any:
    """Execute on the connection's DBAPI cursor, inside its current transaction; driver errors come out as
    SQLAlchemy's exception types (so retries and 503s work as for any statement), and a connection the
    driver reports as broken is invalidated rather than returned to the pool."""
    dialect = connection.dialect
    raw = connection.connection
    cursor = raw.cursor()
    try:
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
    except dialect.loaded_dbapi.Error as error:
        broken = dialect.is_disconnect(error, raw.dbapi_connection, cursor)
        if broken:
            connection.invalidate(error)
        raise sa.exc.DBAPIError.instance(
            sql, params, error, dialect.loaded_dbapi.Error, connection_invalidated=broken, dialect=dialect
        ) from error
    return cursor


@contextmanager
def savepoint(connection: Connection, name: str) -> Iterator[Callable[[], None]]:
    """A savepoint inside the current transaction; call the yielded function to roll back to it. An
    exception leaving the block rolls back to it too (then propagates).

    Plain SQL on the driver's cursor: SQLAlchemy's ``begin_nested`` costs ~0.25 ms per pair here, more
    than the statements it protects on the hot path.
    """
    _run(connection, f"SAVEPOINT {name}", ())
    rolled_back = False

    def rollback() -> None:
        nonlocal rolled_back
        _run(connection, f"ROLLBACK TO SAVEPOINT {name}", ())
        rolled_back = True

    try:
        yield rollback
    except Exception:
        if not rolled_back:
            with suppress(sa.exc.DBAPIError):  # a lost connection must not hide the error that lost it
                rollback()
        raise
    if not rolled_back:
        _run(connection, f"RELEASE SAVEPOINT {name}", ())


def execute_many(
    connection: Connection,
    cache_key: Hashable,
    build: Callable[[str], sa.ClauseElement],
    rows: Sequence[Mapping[str, Any]],
) -> int:
    """Run one Core statement for many rows as a single driver-level ``executemany``; the rows written.

    The statement (``build(dialect_name)``) is compiled once per dialect and column set, and each row goes
    through the column types' own bind processors. This skips SQLAlchemy's generic per-row parameter
    handling on the hot path. Every row has the same keys.
    """
    if not rows:
        return 0
    dialect = connection.dialect
    key = (cache_key, dialect.name, tuple(rows[0]))
    entry = _compiled.get(key)
    if entry is None:
        entry = _compiled[key] = _compile(build(dialect.name), dialect, list(rows[0]))
    sql, positional, params = entry
    converted = _convert(rows, positional, params)
    return int(_run(connection, sql, converted, many=True).rowcount)


def _convert(rows: Sequence[Mapping[str, Any]], positional: bool, params: list[tuple[str, _Processor]]) -> list[Any]:
    """Rows as the driver wants them. Plain values are taken with ``itemgetter`` (C speed); values with a
    processor are processed once per distinct value in the batch (a batch's ``now`` is formatted once)."""
    names = [name for name, _ in params]
    processed = [(index, process) for index, (_, process) in enumerate(params) if process is not None]
    take = itemgetter(*names)
    tuples = [take(row) for row in rows] if len(names) > 1 else [(row[names[0]],) for row in rows]
    if processed:
        memo: dict[tuple[int, Any], Any] = {}
        converted = []
        for values in tuples:
            mutable = list(values)
            for index, process in processed:
                raw = mutable[index]
                if raw is not None:
                    key = (index, raw)
                    if key not in memo:
                        memo[key] = process(raw)
                    mutable[index] = memo[key]
            converted.append(tuple(mutable))
        tuples = converted
    if positional:
        return tuples
    return [dict(zip(names, values, strict=True)) for values in tuples]


def run_cached(
    connection: Connection, cache_key: Hashable, build: Callable[[], sa.ClauseElement], params: Mapping[str, Any]
) -> Any:
    """Run ``build()`` with ``params``; compiled once per dialect and ``cache_key``, executed by the driver."""
    key = (cache_key, connection.dialect.name)
    entry = _compiled.get(key)
    if entry is None:
        entry = _compiled[key] = _compile(build(), connection.dialect, [])
    sql, positional, processors = entry
    [converted] = _convert([params], positional, processors)
    return _run(connection, sql, converted)


def placeholders(prefix: str, count: int) -> list[sa.BindParameter[Any]]:
    return [sa.bindparam(f"{prefix}{i}") for i in range(count)]


def padded(values: Sequence[Any]) -> list[Any]:
    """``values`` repeated at the end up to the next power of two: the statements that take a list are
    compiled for a handful of lengths instead of one per batch size (a repeated IN value changes nothing)."""
    size = 1 << max(len(values) - 1, 0).bit_length()
    return [*values, *[values[-1]] * (size - len(values))]


def fetch_in(
    connection: Connection,
    cache_key: Hashable,
    build: Callable[[Sequence[sa.BindParameter[Any]]], sa.Select[Any]],
    values: Sequence[Any],
) -> list[Any]:
    """Rows of ``build(placeholders)`` — a SELECT with ``column IN (placeholders)`` — for ``values``.

    Compiled once per dialect and number of values, so a batch's lookups avoid SQLAlchemy's expansion of
    ``IN`` lists on every execution.
    """
    if not values:
        return []
    values = padded(values)
    params = {f"v{i}": v for i, v in enumerate(values)}
    cursor = run_cached(connection, (cache_key, len(values)), lambda: build(placeholders("v", len(values))), params)
    return list(cursor.fetchall())
