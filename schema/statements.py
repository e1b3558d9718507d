"""Running Core statements on the hot path: compiled once, executed on the driver's cursor.

SQLAlchemy's per-execution machinery costs more than the statements a group-commit batch runs, so these
helpers compile a statement once per dialect and shape, convert values with the column types' own bind
processors, and execute on the DBAPI cursor inside the connection's current transaction. Driver errors
come out as SQLAlchemy's exception types, so retries and 503s work as for any other statement.

On MySQL the values are written into the statement as literals by pymysql's own escaping function, one
call per value (pymysql's ``execute`` makes about five per value, most of its time per row), and a
multi-row insert is one statement per ~1 MB, as pymysql's ``executemany`` builds it. On PostgreSQL the
statements carry the server's own numbered placeholders (``$1``) and run on psycopg's raw cursor, which
sends them as they are: psycopg's usual cursor rewrites ``%s`` into them with a regular expression, and
caches that only for statements under 4 KB and 50 parameters, which a batch's inserts are not. Inserts
are prepared (psycopg prepares a statement once it has run it five times, per query text and parameter
types, so every int goes as int8), and a plain multi-row ``INSERT`` goes in a few multi-row statements,
not ``executemany``'s one execution per row. Nothing else is prepared: after five runs PostgreSQL may
keep one generic plan for a prepared statement, made from the statistics of that moment, and a lookup
planned while ``webhook_logs`` was empty scanned the whole table for every batch until the next
``ANALYZE`` (measured: 5-10 ms of a batch's 12 on a new database, 0.7 ms once planned for its values).
"""

import re
import sqlite3
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from functools import cache
from itertools import chain
from operator import itemgetter
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from psycopg.types.numeric import Int8Dumper
from sqlalchemy import Connection
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.sql.compiler import SQLCompiler

from creditrelay.schema.database import insert_ignoring_duplicates
from creditrelay.schema.mysql_text import inline, literal_for, only_duplicates_ignored

_Processor = Callable[[Any], Any] | None  # a type's bind processor for the dialect
_Compiled = tuple[str, list[tuple[str, _Processor]]]  # SQL with positional parameters, their processors
_compiled: dict[tuple[Hashable, ...], _Compiled] = {}
_MYSQL_STATEMENT_BYTES = 1_000_000  # pymysql's executemany cuts its statements at this size too
_SQLITE_ROWS = 64  # rows per multi-row INSERT on SQLite: 64 x the widest table's 13 columns stays far
# below its 32,766 parameters per statement


def returns_inserted(dialect: sa.Dialect) -> bool:
    """Whether an ``INSERT`` can say which rows it wrote (``RETURNING``): SQLite 3.35+, MariaDB 10.5+ and
    PostgreSQL can, MySQL cannot."""
    if dialect.name == "sqlite":
        return sqlite3.sqlite_version_info >= (3, 35)
    if dialect.name == "postgresql":
        return True
    version = dialect.server_version_info or ()
    return bool(getattr(dialect, "is_mariadb", False)) and tuple(version[:2]) >= (10, 5)


def insert_returning(
    connection: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], returning: Sequence[str]
) -> list[Any]:
    """A multi-row ``INSERT`` that skips rows whose unique keys exist, returning the ``returning`` columns
    of the rows it wrote (the database must ``returns_inserted``). Every row has the same keys, and a unique
    key that is not null: on SQLite a statement is padded with copies of its last row, which that key
    skips."""
    if not rows:
        return []
    dialect = connection.dialect
    sql, params = _cached(
        ("insert_returning", table.name), dialect, rows[0], lambda: insert_ignoring_duplicates(table, dialect.name)
    )
    head, group, tail = _values_group(sql)
    quote = dialect.identifier_preparer.quote
    tail += f" RETURNING {', '.join(quote(c) for c in returning)}"
    cursors = _insert_rows(connection, (head, group, tail), _convert(rows, params))
    return [row for cursor in cursors for row in cursor.fetchall()]


def execute_many(
    connection: Connection,
    cache_key: Hashable,
    build: Callable[[str], sa.ClauseElement],
    rows: Sequence[Mapping[str, Any]],
) -> int:
    """Run one Core statement (``build(dialect_name)``) for many rows; the rows written. An ``INSERT`` on
    MySQL or PostgreSQL goes as multi-row statements, anything else as the driver's ``executemany``. Every
    row has the same keys."""
    if not rows:
        return 0
    dialect = connection.dialect
    sql, params = _cached(cache_key, dialect, rows[0], lambda: build(dialect.name))
    converted = _convert(rows, params)
    if dialect.name != "sqlite" and sql.startswith("INSERT"):  # not padded: a copy could break a unique key
        parts = _values_group(sql)
        return sum(int(cursor.rowcount) for cursor in _insert_rows(connection, parts, converted, pad=False))
    return int(_run(connection, sql, converted, many=True).rowcount)


def insert_all(connection: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert every row (a table whose new rows meet no unique key): multi-row statements, as
    ``insert_returning`` writes them, instead of the driver's row-by-row ``executemany``."""
    if not rows:
        return
    dialect = connection.dialect
    sql, params = _cached(("insert_all", table.name), dialect, rows[0], table.insert)
    for _ in _insert_rows(connection, _values_group(sql), _convert(rows, params), pad=False):
        pass


def run_cached(
    connection: Connection, cache_key: Hashable, build: Callable[[], sa.ClauseElement], params: Mapping[str, Any]
) -> Any:
    """Run ``build()`` with ``params``; compiled once per dialect and ``cache_key``, executed by the driver."""
    sql, processors = _cached(cache_key, connection.dialect, {}, build)
    [converted] = _convert([params], processors)
    return _run(connection, sql, converted)


def fetch_in(
    connection: Connection,
    cache_key: Hashable,
    build: Callable[[Sequence[sa.BindParameter[Any]]], sa.Select[Any]],
    values: Sequence[Any],
) -> list[Any]:
    """Rows of ``build(placeholders)`` — a SELECT with ``column IN (placeholders)`` — for ``values``.

    Compiled once per dialect and padded number of values, so a batch's lookups avoid SQLAlchemy's
    expansion of ``IN`` lists on every execution.
    """
    if not values:
        return []
    return fetch_in_each(connection, cache_key, lambda lists: build(lists[0]), [values])


def fetch_in_each(
    connection: Connection,
    cache_key: Hashable,
    build: Callable[[Sequence[Sequence[sa.BindParameter[Any]]]], sa.Executable],
    lists: Sequence[Sequence[Any]],
    params: Mapping[str, Any] | None = None,
) -> list[Any]:
    """``fetch_in`` for a statement with several ``IN`` lists (one round trip for several lookups): ``build``
    gets one list of placeholders per list of values. Every list must hold at least one value. ``params``:
    the statement's other bound parameters, by name (always the same names for one ``cache_key``)."""
    lists = [padded(values) for values in lists]
    shape = tuple(len(values) for values in lists)
    params = dict(zip(_list_names(shape), chain.from_iterable(lists), strict=True)) | dict(params or {})

    def statement() -> sa.ClauseElement:
        return cast(sa.ClauseElement, build([placeholders(f"v{n}_", size) for n, size in enumerate(shape)]))

    return list(run_cached(connection, (cache_key, shape), statement, params).fetchall())


@cache
def _list_names(shape: tuple[int, ...]) -> tuple[str, ...]:
    """The parameter names of ``fetch_in_each``'s lists of these lengths, in order."""
    return tuple(f"v{n}_{i}" for n, size in enumerate(shape) for i in range(size))


def placeholders(prefix: str, count: int) -> list[sa.BindParameter[Any]]:
    return [sa.bindparam(f"{prefix}{i}") for i in range(count)]


def padded(values: Sequence[Any]) -> list[Any]:
    """``values`` repeated at the end up to the next power of two: the statements that take a list are
    compiled for a handful of lengths instead of one per batch size (a repeated IN value changes nothing)."""
    size = 1 << max(len(values) - 1, 0).bit_length()
    return [*values, *[values[-1]] * (size - len(values))]


@contextmanager
def savepoint(connection: Connection, name: str) -> Iterator[Callable[[], None]]:
    """A savepoint inside the current transaction; call the yielded function to roll back to it. An
    exception leaving the block rolls back to it too (then propagates).

    Plain SQL on the driver's cursor rather than SQLAlchemy's ``begin_nested``, whose bookkeeping costs more
    than the statements it protects on the hot path (docs/decisions).
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


def _cached(
    cache_key: Hashable, dialect: sa.Dialect, row: Mapping[str, Any], build: Callable[[], sa.ClauseElement]
) -> _Compiled:
    key = (cache_key, dialect.name, tuple(row))
    entry = _compiled.get(key)
    if entry is None:
        entry = _compiled[key] = _compile(build(), dialect, list(row))
    return entry


def _compile(statement: sa.ClauseElement, dialect: sa.Dialect, keys: Sequence[str]) -> _Compiled:
    """SQL with positional parameters (pymysql takes "%s" as well as named ones; PostgreSQL's are "$1"), so
    values travel as tuples, and each parameter's bind processor."""
    positional = dialect
    if dialect.name == "postgresql":
        positional = cast(type[DefaultDialect], type(dialect))(paramstyle="numeric_dollar")
    elif not dialect.positional:
        positional = cast(type[DefaultDialect], type(dialect))(paramstyle="format")
    # as for executemany: an INSERT gets no RETURNING of its primary key added (PostgreSQL's would)
    compiled = positional.statement_compiler(positional, statement, column_keys=list(keys), for_executemany=True)
    assert isinstance(compiled, SQLCompiler)
    assert compiled.positiontup is not None
    binds = compiled.binds
    return str(compiled), [(name, _processor(binds[name].type, dialect)) for name in compiled.positiontup]


def _datetime_text(value: datetime) -> str:
    """A naive UTC datetime as the text the databases take: MySQL's literal, and on SQLite the very string
    SQLAlchemy's default ``DATETIME`` storage format writes (``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    return value.isoformat(" ", "microseconds")


def _processor(kind: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> _Processor:
    """The type's bind processor, except for datetimes: their text by ``isoformat`` (on MySQL pymysql escapes
    that several times faster than a datetime object; on SQLite it is ~4x cheaper than SQLAlchemy's
    formatting by a dict of fields)."""
    impl = kind.dialect_impl(dialect)
    if isinstance(kind, sa.DateTime) and (
        dialect.name == "mysql" or getattr(impl, "_storage_format", None) == sqlite.DATETIME._storage_format
    ):
        return _datetime_text
    return impl.bind_processor(dialect)


def _convert(rows: Sequence[Mapping[str, Any]], params: list[tuple[str, _Processor]]) -> list[tuple[Any, ...]]:
    """Rows as tuples in parameter order. Plain values are taken with ``itemgetter`` (C speed); a column with
    a processor is converted as a column, each distinct value once (a batch's ``now`` is formatted once)."""
    names = [name for name, _ in params]
    if not names:
        return [() for _ in rows]
    processed = [(index, process) for index, (_, process) in enumerate(params) if process is not None]
    take = itemgetter(*names)
    tuples = [take(row) for row in rows] if len(names) > 1 else [(row[names[0]],) for row in rows]
    if not processed:
        return tuples
    columns = list(zip(*tuples, strict=True))
    for index, process in processed:
        memo: dict[Any, Any] = {None: None}
        for raw in columns[index]:
            if raw not in memo:
                memo[raw] = process(raw)
        columns[index] = tuple(map(memo.__getitem__, columns[index]))
    return list(zip(*columns, strict=True))


def _values_group(sql: str) -> tuple[str, str, str]:
    """An ``INSERT … VALUES (…) …`` cut around its one ``VALUES`` group, to repeat the group for n rows."""
    head, values, rest = sql.partition(" VALUES ")
    end = rest.index(")") + 1  # placeholders hold no parenthesis
    return head + values, rest[:end], rest[end:]


def _insert_rows(
    connection: Connection, parts: tuple[str, str, str], rows: list[tuple[Any, ...]], *, pad: bool = True
) -> Iterator[Any]:
    """Cursors of the multi-row statements inserting ``rows``: on MySQL as few as its packet size allows, on
    SQLite and PostgreSQL one per 64 rows."""
    head, group, tail = parts
    if connection.dialect.name != "mysql":
        # At most _SQLITE_ROWS rows per statement, a short chunk padded (``pad``) with copies of its last row
        # to a power of two: the copies meet that row's unique key and are skipped, and the statements come
        # in seven shapes per table, which the driver's statement cache (SQLite's, or PostgreSQL's prepared
        # statements) keeps prepared (one shape per batch size would miss it, and every batch would compile
        # its statements again).
        # Unpadded (``pad=False``: copies of a row would be written, or break a unique key), a short chunk
        # goes as pieces of power-of-two sizes (37 rows: 32, 4 and 1), for the same seven shapes.
        numbered = connection.dialect.name == "postgresql"
        start = 0
        while start < len(rows):
            remaining = min(len(rows) - start, _SQLITE_ROWS)
            size = remaining if pad else 1 << (remaining.bit_length() - 1)
            chunk = rows[start : start + size]
            start += size
            chunk = padded(chunk) if pad else chunk
            flat = [value for row in chunk for value in row]
            groups = _numbered(group, len(chunk)) if numbered else ", ".join([group] * len(chunk))
            yield _run(connection, f"{head}{groups}{tail}", flat)
        return
    # MySQL: each row written out as literals, rows joined into statements of at most ~1 MB, sent as they are
    literal = literal_for(connection.connection.driver_connection)
    head, tail = head.replace("%%", "%"), tail.replace("%%", "%")
    written: list[str] = []
    size = 0
    for row in rows:
        values = f"({', '.join([literal(value) for value in row])})"
        if written and size + len(values) > _MYSQL_STATEMENT_BYTES:
            yield _checked(connection, f"{head}{', '.join(written)}{tail}", len(written))
            written, size = [], 0
        written.append(values)
        size += len(values) + 2
    yield _checked(connection, f"{head}{', '.join(written)}{tail}", len(written))


def _checked(connection: Connection, sql: str, given: int) -> Any:
    """Run a MySQL ``INSERT IGNORE`` of ``given`` rows and check it skipped nothing but duplicates; the
    check's ``SHOW WARNINGS`` is a call on the driver's connection, its errors translated as ``_run``'s (a
    Galera certification conflict can surface there)."""
    cursor = _run(connection, sql, None)
    try:
        return only_duplicates_ignored(cursor, given)
    except connection.dialect.loaded_dbapi.Error as error:
        raise _translated(connection, "SHOW WARNINGS", None, cursor, error) from error


@cache
def _numbered(group: str, count: int) -> str:
    """``count`` copies of a VALUES group with PostgreSQL's placeholders (``($1, $2)``), numbered on
    (``($1, $2), ($3, $4)``)."""
    size = len(_PLACEHOLDER.findall(group))

    def shifted(row: int) -> str:
        return _PLACEHOLDER.sub(lambda found: f"${int(found.group(1)) + row * size}", group)

    return ", ".join(shifted(row) for row in range(count))


_PLACEHOLDER = re.compile(r"\$(\d+)")


def _run(connection: Connection, sql: str, params: Any, *, many: bool = False) -> Any:
    """Execute on the connection's DBAPI cursor, inside its current transaction; driver errors come out as
    SQLAlchemy's exception types, and a connection the driver reports as broken is invalidated rather than
    returned to the pool."""
    dialect = connection.dialect
    raw = connection.connection
    if dialect.name == "postgresql":  # psycopg's raw cursor takes "$1" placeholders as they are
        cursor: Any = psycopg.RawCursor(cast("psycopg.Connection[Any]", raw.dbapi_connection))
        # every int as int8 (psycopg picks int2, int4 or int8 by the value, and a statement is prepared
        # per query and parameter types: a batch's varied balances would make each insert a new one)
        cursor.adapters.register_dumper(int, Int8Dumper)
    else:
        cursor = raw.cursor()
    try:  # a plain try, not a context manager: it runs for every statement of the hot path
        if many:
            cursor.executemany(sql, params)
        elif dialect.name == "mysql" and params:
            cursor.execute(inline(raw.driver_connection, sql, params))
        elif dialect.name == "postgresql" and not sql.startswith("INSERT"):
            cursor.execute(sql, params, prepare=False)  # planned for its values, each time (the module's note)
        else:
            cursor.execute(sql, params)
    except dialect.loaded_dbapi.Error as error:
        raise _translated(connection, sql, params, cursor, error) from error
    return cursor


def _translated(connection: Connection, sql: str, params: Any, cursor: Any, error: Any) -> sa.exc.StatementError:
    """A driver's error as SQLAlchemy's exception type, so retries and 503s work as for any other statement;
    a connection the driver reports as broken is invalidated rather than returned to the pool."""
    dialect = connection.dialect
    broken = dialect.is_disconnect(error, connection.connection.dbapi_connection, cursor)
    if broken:
        connection.invalidate(error)
    translated: sa.exc.StatementError = sa.exc.DBAPIError.instance(
        sql, params, error, dialect.loaded_dbapi.Error, connection_invalidated=broken, dialect=dialect
    )
    return translated
