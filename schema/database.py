"""Engines for the supported databases, and the one place their differences are spelled out.

SQLite (the embedded default): WAL journal, ``synchronous=FULL`` so a commit is on disk before it returns,
foreign keys on, and every writing transaction ``BEGIN IMMEDIATE`` so writers queue on the busy timeout
instead of failing on a lock upgrade; a transaction run ``read_only`` starts with a plain ``BEGIN`` and
never takes the write lock. MySQL/MariaDB through pymysql: ``READ COMMITTED`` (no gap locks; reads see
the latest commit), UTC sessions in strict mode (a value that does not fit is an error, never cut),
utf8mb4 with a binary NO PAD collation (identifiers compare byte for byte, trailing spaces included),
stale pooled connections replaced. PostgreSQL through psycopg 3: ``READ COMMITTED``, UTC sessions; it is
strict already (a value that does not fit is an error) and its deterministic collations tell apart any
two strings whose bytes differ.

Billing's ledger and the sender's outbox both use these engines. Below them, the transactions their callers
run: one commit per unit of work, the deadlocks and lost connections that are safe to retry retried, and a
database out of reach told apart from a statement it refused.
"""

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from tenacity import RetryCallState, Retrying, nap, stop_after_attempt, wait_random_exponential

from creditrelay.schema.errors import DatabaseUnavailable as DatabaseUnavailable  # raised here, defined with the others
from creditrelay.schema.errors import TransactionConflict, UnsupportedDatabase

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")  # naive UTC, microseconds
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")  # a 64 KiB body does not fit MySQL's TEXT


def utc(seconds: float) -> datetime:
    """Unix seconds as the naive UTC datetime every table stores. The same value as
    ``datetime.fromtimestamp(seconds, UTC)`` without its zone, at less than half the cost (once per webhook
    event on the writer's thread)."""
    return _EPOCH + timedelta(seconds=seconds)


_EPOCH = datetime(1970, 1, 1)


# Identifiers compare byte for byte on MySQL, as they do on SQLite: a binary collation that does not pad
# (``utf8mb4_bin`` is PAD SPACE: "R1 " = "R1"). MariaDB's name for it is the default here; a table created on
# MySQL 8 gets MySQL's (``register_exact_collation``).
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_nopad_bin",
}
READ_ONLY = "creditrelay_read_only"  # an execution option: the transaction only reads (SQLite: no write lock)


def exact_collation(dialect: sa.Dialect, *, required: bool = True) -> str:
    """The binary NO PAD utf8mb4 collation of this MySQL server: MariaDB 10.2+ and MySQL 8.0+ have one.
    MySQL 5.7 has none: ``UnsupportedDatabase``, or unless ``required``, the padding ``utf8mb4_bin``."""
    version = tuple(dialect.server_version_info or ())
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    if version >= (8, 0):
        return "utf8mb4_0900_bin"
    if not required:
        return "utf8mb4_bin"
    raise UnsupportedDatabase("MySQL before 8.0 has no binary NO PAD collation: use MySQL 8.0+ or MariaDB 10.2+")


def register_exact_collation(metadata: sa.MetaData, *, required: bool = True) -> None:
    """Tables of ``metadata`` created on MySQL get that server's ``exact_collation``."""

    @event.listens_for(metadata, "before_create")
    def _collate(_target: sa.MetaData, connection: Connection, **kwargs: Any) -> None:
        if connection.dialect.name == "mysql":
            for table in kwargs.get("tables") or metadata.sorted_tables:
                table.dialect_options["mysql"]["collate"] = exact_collation(connection.dialect, required=required)


def convert_to_exact_collation(connection: Connection, tables: Sequence[str], *, required: bool = True) -> list[str]:
    """Rebuild those of ``tables`` (MySQL) whose collation is not ``exact_collation``; the ones converted.

    Safe on existing data: a NO PAD binary collation tells apart strictly more values than a PAD SPACE one,
    so no unique key can collide after the change. On MySQL the rebuild copies the table.
    """
    if connection.dialect.name != "mysql":
        return []
    wanted = exact_collation(connection.dialect, required=required)
    found = connection.execute(
        sa.text(
            "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN :names"
        ).bindparams(sa.bindparam("names", expanding=True)),
        {"names": list(tables)},
    )
    converted = sorted(name for name, collation in found if collation != wanted)
    for name in converted:
        connection.exec_driver_sql(f"ALTER TABLE `{name}` CONVERT TO CHARACTER SET utf8mb4 COLLATE {wanted}")
    return converted


# Strict: a value too long, out of range or NULL where it may not be is an error, in and out of
# transactions, whatever the server's default mode is; and all of a statement's warnings are kept.
_MYSQL_SESSION = (
    "SET time_zone = '+00:00', "
    "sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES', 'ERROR_FOR_DIVISION_BY_ZERO'), "
    "max_error_count = 65535"  # every warning of a statement can be read back (schema.statements)
)


def with_driver(url: URL) -> URL:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default for it would be psycopg2)."""
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    return url


DEFAULT_LOCK_TIMEOUT = 5.0  # seconds a statement may wait for a lock (DATABASE_LOCK_TIMEOUT)


def make_engine(
    url: URL | str,
    *,
    busy_timeout_ms: int | None = None,
    pool_size: int = 8,
    pool_timeout: float = 30.0,
    lock_timeout: float | None = None,
) -> Engine:
    """An engine on which no statement waits for a lock longer than ``lock_timeout`` seconds: SQLite's busy
    timeout, MySQL's ``innodb_lock_wait_timeout`` (rows) and ``lock_wait_timeout`` (tables, and a global read
    lock such as ``FLUSH TABLES WITH READ LOCK``), PostgreSQL's ``lock_timeout``. A wait past it is an
    error that ``run_transaction`` tries once more and then answers as the database being unavailable, so a
    blocked database is a 503 in seconds, not a request hanging for a day (MySQL's default)."""
    seconds = DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout
    url = with_driver(sa.make_url(url))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout_ms if busy_timeout_ms is not None else int(seconds * 1000))
    if url.get_backend_name() == "postgresql":
        # UTC sessions (the tables hold naive UTC; nothing reads the server's clock, but a person's SQL might)
        options = f"-c TimeZone=UTC -c lock_timeout={max(1, int(seconds * 1000))}"
        connect_args: dict[str, Any] = {"connect_timeout": 5, "options": options}
    else:
        wait = max(1, round(seconds))  # MySQL takes whole seconds
        session = f"{_MYSQL_SESSION}, innodb_lock_wait_timeout = {wait}, lock_wait_timeout = {wait}"
        connect_args = {"charset": "utf8mb4", "init_command": session, "connect_timeout": 5}
    return sa.create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        pool_recycle=3600,
        connect_args=connect_args,
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
        cursor.execute("PRAGMA temp_store=MEMORY")  # statement journals of big batches: no temp file each
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()
        # lower() of all of Unicode, as MySQL's and PostgreSQL's (SQLite's own folds ASCII only)
        dbapi_connection.create_function("lower", 1, _lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _lower(value: Any) -> Any:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).lower()


def insert_ignoring_duplicates(table: sa.Table, dialect_name: str) -> sa.Insert:
    """An INSERT that skips rows whose unique keys already exist; ``rowcount`` counts the rows written.

    On MySQL this is ``INSERT IGNORE``, which turns *every* error into a warning (a value too long is cut,
    one out of range clamped): run it through ``schema.statements``, which refuses a statement that warned
    of anything but duplicates.
    """
    if dialect_name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect_name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return mysql.insert(table).prefix_with("IGNORE")


def upsert(
    table: sa.Table, dialect_name: str, row: dict[str, Any], key: Sequence[str], update: Sequence[str]
) -> sa.Insert:
    """Insert ``row``, or where its unique ``key`` exists set the ``update`` columns to ``row``'s values
    (only a conflict on that key is resolved; anything else is an error)."""
    if dialect_name == "sqlite":
        lite = sqlite.insert(table).values(row)
        return lite.on_conflict_do_update(index_elements=list(key), set_={c: lite.excluded[c] for c in update})
    if dialect_name == "postgresql":
        pg = postgresql.insert(table).values(row)
        return pg.on_conflict_do_update(index_elements=list(key), set_={c: pg.excluded[c] for c in update})
    statement = mysql.insert(table).values(row)
    return statement.on_duplicate_key_update({c: statement.inserted[c] for c in update})


# --- transactions: commit once per unit of work, retry what is safe to retry ---

T = TypeVar("T")

# MySQL errors after which the whole transaction may simply run again: deadlock, lock wait timeout,
# and the connection errors that leave a commit's fate unknown (the constraints make a re-run harmless).
_MYSQL_RETRYABLE = {1213, 1205, 2006, 2013}
_MYSQL_LOCK_WAIT = 1205  # each try waits the whole lock timeout: tried once more, not five times
# MySQL errors that say the server is away or will not take a connection now, not that it refused our
# statement: can't connect (2002, 2003, 2005), gone or lost (2006, 2013, 2055), too many connections
# (1040, 1203), server shutting down (1053), connection killed or aborted (1152, 1927, 4031), read-only
# (1290, 1836: a replica or a failover in progress), and the lock waits and deadlocks still there after
# every retry (1205, 1213), and a statement that ran out of time (MariaDB's max_statement_time 1969, MySQL's
# max_execution_time 3024): the database's trouble, not the statement's.
_MYSQL_UNAVAILABLE = {
    *(2002, 2003, 2005, 2006, 2013, 2055, 1040, 1203, 1053, 1152, 1927, 4031, 1290, 1836, 1205, 1213),
    *(1969, 3024),
}
# SQLite primary result codes that mean the database file cannot be used now: busy or locked past the
# timeout, disk I/O, full, cannot open, locking protocol, read-only. Everything else (no such table, too
# many SQL variables, a syntax error, an integer overflow) is a refusal of the statement.
_SQLITE_UNAVAILABLE = {5, 6, 8, 10, 13, 14, 15}
# PostgreSQL SQLSTATEs after which the transaction may run again: a deadlock, a serialization failure
# (another transaction's commit got in the way), a lock not available within lock_timeout.
_POSTGRES_RETRYABLE = {"40P01", "40001", "55P03"}
_POSTGRES_LOCK_WAIT = "55P03"
# ... and those that say the server is away or will not take work now: connection failures (class 08),
# the server shutting down or starting (57P01-57P03), too many connections (53300), a read-only server (a
# standby, or a failover in progress: 25006), out of disk or memory (53100, 53200), a statement cancelled by
# statement_timeout or an operator (57014), and the retryable ones still there after every retry. An
# OperationalError without a SQLSTATE never reached the server — unless psycopg refused to send it (too
# many parameters: a statement of ours too big, which is our bug, not an outage).
_POSTGRES_UNAVAILABLE = {"57P01", "57P02", "57P03", "57014", "53300", "53100", "53200", "25006", *_POSTGRES_RETRYABLE}
_POSTGRES_UNSENDABLE = "number of parameters must be between"


def _code(error: DBAPIError) -> int | None:
    """The driver's error code: pymysql's first argument, sqlite3's primary result code."""
    orig = error.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return None if code is None else int(code) & 0xFF
    if orig is not None and orig.args and isinstance(orig.args[0], int):
        return int(orig.args[0])
    return None


def _sqlstate(error: DBAPIError) -> str | None:
    """psycopg's SQLSTATE of the error (None when it never reached the server)."""
    return getattr(error.orig, "sqlstate", None)


def _is_postgres(error: DBAPIError) -> bool:
    return type(error.orig).__module__.startswith("psycopg")


def is_retryable(error: BaseException) -> bool:
    """A deadlock, a lock wait timeout or a lost connection (MySQL), a deadlock, a serialization failure or
    a lock timeout (PostgreSQL), a conflict the transaction found itself: it may run again."""
    if isinstance(error, TransactionConflict):
        return True
    if not isinstance(error, DBAPIError) or isinstance(error.orig, sqlite3.Error):
        return False
    if _is_postgres(error):
        return _sqlstate(error) in _POSTGRES_RETRYABLE
    return _code(error) in _MYSQL_RETRYABLE


def is_unavailable(error: BaseException) -> bool:
    """A lost or refused connection, or a database that cannot be used now: an outage (503), not a refusal
    of this statement (which is the unit of work's own failure)."""
    if isinstance(error, PoolTimeoutError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    code = _code(error)
    if isinstance(error.orig, sqlite3.Error):
        return code in _SQLITE_UNAVAILABLE
    if isinstance(error, InterfaceError):  # the driver has no usable connection
        return True
    if _is_postgres(error):
        state = _sqlstate(error)
        if state is None:
            return isinstance(error, OperationalError) and _POSTGRES_UNSENDABLE not in str(error.orig)
        return state.startswith("08") or state in _POSTGRES_UNAVAILABLE
    return isinstance(error, OperationalError) and code in _MYSQL_UNAVAILABLE


def _is_lock_wait(error: BaseException) -> bool:
    if not isinstance(error, DBAPIError) or isinstance(error.orig, sqlite3.Error):
        return False
    if _is_postgres(error):
        return _sqlstate(error) == _POSTGRES_LOCK_WAIT
    return _code(error) == _MYSQL_LOCK_WAIT


def _worth_another_try(state: RetryCallState) -> bool:
    """A retryable error, but a lock wait that timed out only once: each such try already waited the whole
    lock timeout, and a database that keeps a lock that long is answered as unavailable."""
    error = state.outcome.exception() if state.outcome is not None else None
    if error is None or not is_retryable(error):
        return False
    return not (_is_lock_wait(error) and state.attempt_number >= 2)


def run_transaction(
    target: Engine | Connection,
    work: Callable[[Connection], T],
    *,
    attempts: int = 5,
    sleep: Callable[[float], None] | None = None,
    read_only: bool = False,
) -> T:
    """Run ``work`` in one transaction, commit it, and run it again on a deadlock or a lost connection.

    ``target`` is an engine (a pooled connection per transaction) or a connection its caller holds (a
    writer's own: no checkout, liveness ping or reset per transaction; a lost one reconnects on next use).
    ``work`` must be idempotent by the database's constraints (billing's is). A database that stays out of
    reach becomes ``DatabaseUnavailable``; any other error propagates untouched. ``read_only`` work (an
    engine's) never takes SQLite's write lock, so a long read does not hold up the writers.
    """
    if read_only and isinstance(target, Engine):
        target = target.execution_options(**{READ_ONLY: True})
    retrying = Retrying(
        retry=_worth_another_try,
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.01, max=0.5),
        reraise=True,
        sleep=sleep or nap.sleep,
    )
    with _unavailable_as_such():
        for attempt in retrying:
            with attempt, _begin(target) as connection:
                return work(connection)
    raise AssertionError("unreachable: tenacity reraises the last error")


def connect(engine: Engine) -> Connection:
    """A connection for a caller to hold; ``DatabaseUnavailable`` when the database does not answer."""
    with _unavailable_as_such():
        return engine.connect()


@contextmanager
def _begin(target: Engine | Connection) -> Iterator[Connection]:
    if isinstance(target, Engine):
        with target.begin() as connection:
            yield connection
    else:
        try:
            with target.begin():
                yield target
        except BaseException:
            _reset(target)
            raise


def _reset(connection: Connection) -> None:
    """What returning a connection to the pool would do: roll back whatever the driver still holds open
    (a failed ``COMMIT`` can leave the transaction open under SQLAlchemy's feet)."""
    if connection.invalidated:
        return  # a new driver connection comes with the next use
    with suppress(Exception):  # the error that brought us here is the one to report
        driver = connection.connection.dbapi_connection
        if driver is not None:
            driver.rollback()


@contextmanager
def _unavailable_as_such() -> Iterator[None]:
    try:
        yield
    except TransactionConflict as error:  # still there after every retry: busy, not wrong; try again later
        raise DatabaseUnavailable(f"rows kept changing under this transaction: {error}") from error
    except (DBAPIError, PoolTimeoutError) as error:
        if is_unavailable(error):
            raise DatabaseUnavailable(str(error.orig) if isinstance(error, DBAPIError) else str(error)) from error
        raise


def ping(engine: Engine) -> None:
    """Raise ``DatabaseUnavailable`` unless the database takes a write transaction now."""
    run_transaction(engine, lambda connection: connection.execute(sa.text("SELECT 1")), attempts=1)
