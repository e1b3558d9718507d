"""Transactions on the engines of ``schema.database``: one commit per unit of work, the deadlocks and lost
connections that are safe to retry retried, and a database out of reach (an outage: 503) told apart from a
statement it refused (the unit of work's own failure).

A cluster's normal behaviour is one of those: a Galera certification conflict is a deadlock (1213), a
node not ready for clients (1047) and a demoted primary (PostgreSQL's 25006) are servers that cannot take
writes now, whose connections are left for new ones. Whichever statement raised it, SQLAlchemy's or a
call on the driver's own connection, it is retried, and a 503 once the retries are spent — never a 500.
"""

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from tenacity import RetryCallState, Retrying, nap, stop_after_attempt, wait_random_exponential

from creditrelay.schema.database import READ_ONLY
from creditrelay.schema.errors import DatabaseUnavailable, TransactionConflict

T = TypeVar("T")

# MySQL errors after which the whole transaction may simply run again: deadlock (Galera's certification
# conflict is one), lock wait timeout, MySQL Group Replication's certification conflict (3101), and the
# connection errors that leave a commit's fate unknown (the constraints make a re-run harmless).
_MYSQL_RETRYABLE = {1213, 1205, 3101, 2006, 2013}
_MYSQL_LOCK_WAIT = 1205  # each try waits the whole lock timeout: tried once more, not five times
# Errors that say this server cannot take writes now, whatever the statement: a Galera node that is not
# ready for clients (1047: it left the cluster's primary component, or is still joining), a read-only server
# (MySQL's 1290 and 1836, PostgreSQL's 25006: a replica, or a primary a failover demoted). Asking the same
# connection again would get the same answer, so it is invalidated, the engine's idle connections are
# closed, and the work is tried once more on a new connection (with a multi-host URL and
# ``target_session_attrs=read-write``, one to the server that takes writes now).
_MYSQL_NOT_WRITABLE = {1047, 1290, 1836}
_POSTGRES_NOT_WRITABLE = {"25006"}
# MySQL errors that say the server is away or will not take a connection now, not that it refused our
# statement: can't connect (2002, 2003, 2005), gone or lost (2006, 2013, 2055), too many connections
# (1040, 1203), server shutting down (1053), connection killed or aborted (1152, 1927, 4031), read-only
# (1290, 1836: a replica or a failover in progress), and the lock waits and deadlocks still there after
# every retry (1205, 1213), and a statement that ran out of time (MariaDB's max_statement_time 1969, MySQL's
# max_execution_time 3024): the database's trouble, not the statement's.
_MYSQL_UNAVAILABLE = {
    *(2002, 2003, 2005, 2006, 2013, 2055, 1040, 1203, 1053, 1152, 1927, 4031, 1290, 1836, 1205, 1213),
    *(1969, 3024, 1047, 3101),  # ... a Galera node not ready for clients, a Group Replication conflict
    *(1044, 1045, 1049, 2059),  # access denied, no such database, an auth plugin missing: cannot connect as set
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
_POSTGRES_UNAVAILABLE = {
    *("57P01", "57P02", "57P03", "57014", "53300", "53100", "53200", "25006", *_POSTGRES_RETRYABLE),
    *("28000", "28P01", "3D000"),  # authentication refused, no such database: cannot connect as set
}
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
    """A deadlock (a Galera certification conflict is one), a lock wait timeout or a lost connection
    (MySQL), a deadlock, a serialization failure or a lock timeout (PostgreSQL), a server that cannot take
    writes now (``is_not_writable``: on a new connection), a conflict the transaction found itself: it may
    run again."""
    if isinstance(error, TransactionConflict):
        return True
    if not isinstance(error, DBAPIError) or isinstance(error.orig, sqlite3.Error):
        return False
    if is_not_writable(error):
        return True
    if _is_postgres(error):
        return _sqlstate(error) in _POSTGRES_RETRYABLE
    return _code(error) in _MYSQL_RETRYABLE


def is_not_writable(error: BaseException) -> bool:
    """The server this connection reaches cannot take writes now (a Galera node not ready, a read-only
    server): the connection must be replaced, not asked again."""
    if not isinstance(error, DBAPIError) or isinstance(error.orig, sqlite3.Error):
        return False
    if _is_postgres(error):
        return _sqlstate(error) in _POSTGRES_NOT_WRITABLE
    return _code(error) in _MYSQL_NOT_WRITABLE


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
    """A retryable error, but a lock wait that timed out, or a server that cannot take writes, only once:
    each such try already waited the whole lock timeout, and a database that keeps a lock that long is
    answered as unavailable; a new connection that reaches a server no more writable says the database is
    not there for us now (503: the load balancer's health check routes around this instance)."""
    error = state.outcome.exception() if state.outcome is not None else None
    if error is None or not is_retryable(error):
        return False
    return not ((_is_lock_wait(error) or is_not_writable(error)) and state.attempt_number >= 2)


def run_transaction(
    target: Engine | Connection,
    work: Callable[[Connection], T],
    *,
    attempts: int = 5,
    sleep: Callable[[float], None] | None = None,
    read_only: bool = False,
    keep: Callable[[T], bool] | None = None,
) -> T:
    """Run ``work`` in one transaction, commit it, and run it again on a deadlock, a lost connection, or a
    server that cannot take writes now (once, on a new connection).

    ``target`` is an engine (a pooled connection per transaction) or a connection its caller holds (a
    writer's own: no checkout, liveness ping or reset per transaction; a lost one reconnects on next use).
    ``work`` must be idempotent by the database's constraints (billing's is). A database that stays out of
    reach becomes ``DatabaseUnavailable``; any other error propagates untouched. ``read_only`` work (an
    engine's) never takes SQLite's write lock, so a long read does not hold up the writers. With ``keep``,
    a result it does not keep is returned with the transaction rolled back instead of committed (work that
    found it must start over another way: ``deliveries.deliver``).
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
            with attempt:
                try:
                    with _begin(target) as connection:
                        result = work(connection)
                        if keep is not None and not keep(result):
                            raise _Discarded(result)
                        return result
                except _Discarded as discarded:
                    return cast(T, discarded.result)  # what work returned
    raise AssertionError("unreachable: tenacity reraises the last error")


class _Discarded(Exception):
    """Rolls a transaction back through its context manager, carrying the result not to commit."""

    def __init__(self, result: object) -> None:
        super().__init__("result not kept")
        self.result = result


def connect(engine: Engine) -> Connection:
    """A connection for a caller to hold; ``DatabaseUnavailable`` when the database does not answer."""
    with _unavailable_as_such():
        return engine.connect()


@contextmanager
def _begin(target: Engine | Connection) -> Iterator[Connection]:
    if isinstance(target, Engine):  # what target.begin() does, with the COMMIT inside _driver_errors too
        with target.connect() as connection, _driver_errors(connection), connection.begin():
            yield connection
    else:
        try:
            with _driver_errors(target), target.begin():
                yield target
        except BaseException:
            _reset(target)
            raise


@contextmanager
def _driver_errors(connection: Connection) -> Iterator[None]:
    """A driver's own error that reached the transaction unwrapped (a call on the driver's connection
    outside SQLAlchemy) raised as SQLAlchemy's type, which the retries and 503s know; and a server that
    cannot take writes left: this connection invalidated (a held one reconnects on its next use) and the
    engine's pool replaced, so no idle connection to that server is handed out again."""
    dbapi = connection.dialect.loaded_dbapi
    try:
        yield
    except DBAPIError as error:
        _leave_if_not_writable(connection, error)
        raise
    except dbapi.Error as error:
        translated = DBAPIError.instance(None, None, error, dbapi.Error, dialect=connection.dialect)
        if isinstance(translated, DBAPIError):
            _leave_if_not_writable(connection, translated)
        raise translated from error


def _leave_if_not_writable(connection: Connection, error: DBAPIError) -> None:
    if is_not_writable(error) and not connection.invalidated:
        connection.invalidate(error.orig if isinstance(error.orig, Exception) else None)
        connection.engine.dispose()  # connections checked out elsewhere are closed when they come back


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


@contextmanager
def read_stream(engine: Engine) -> Iterator[Connection]:
    """One read-only transaction held open while its caller streams what it reads (a statement of a
    million lines): never SQLite's write lock; not retried, as what was streamed cannot be taken back; an
    outage is ``DatabaseUnavailable``."""
    reading = engine.execution_options(**{READ_ONLY: True})
    with _unavailable_as_such(), reading.connect() as connection, connection.begin():
        yield connection
