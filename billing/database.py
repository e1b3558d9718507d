"""Transactions for the callers of billing: commit once per unit of work, retry what is safe to retry.

Engines themselves are made by ``schema.database.make_engine``.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from tenacity import Retrying, nap, retry_if_exception, stop_after_attempt, wait_random_exponential

T = TypeVar("T")

# MySQL errors after which the whole transaction may simply run again: deadlock, lock wait timeout,
# and the connection errors that leave a commit's fate unknown (the constraints make a re-run harmless).
_MYSQL_RETRYABLE = {1213, 1205, 2006, 2013}


class DatabaseUnavailable(Exception):
    """The database did not answer (down, unreachable, locked past the timeout); nothing was written."""


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, DBAPIError) and error.orig is not None and error.orig.args:
        return error.orig.args[0] in _MYSQL_RETRYABLE
    return False


def is_unavailable(error: BaseException) -> bool:
    """Connection-level failures and timeouts: the database, not our statement, is the problem."""
    if isinstance(error, PoolTimeoutError | InterfaceError):
        return True
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def run_transaction(
    target: Engine | Connection,
    work: Callable[[Connection], T],
    *,
    attempts: int = 5,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Run ``work`` in one transaction, commit it, and run it again on a deadlock or a lost connection.

    ``target`` is an engine (a pooled connection per transaction) or a connection its caller holds (a
    writer's own: no checkout, liveness ping or reset per transaction; a lost one reconnects on next use).
    ``work`` must be idempotent by the database's constraints (billing's is). A database that stays out of
    reach becomes ``DatabaseUnavailable``; any other error propagates untouched.
    """
    retrying = Retrying(
        retry=retry_if_exception(is_retryable),
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
    except (OperationalError, InterfaceError, PoolTimeoutError) as error:
        if is_unavailable(error):
            raise DatabaseUnavailable(str(error.orig) if isinstance(error, DBAPIError) else str(error)) from error
        raise


def ping(engine: Engine) -> None:
    """Raise ``DatabaseUnavailable`` unless the database takes a write transaction now."""
    run_transaction(engine, lambda connection: connection.execute(sa.text("SELECT 1")), attempts=1)
