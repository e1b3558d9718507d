"""schema/database.py's transactions: only a lost or refused connection is an outage; a refused statement is its own
unit of work's failure. Errors raised by the real drivers on the three databases."""

import psycopg
import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.database import make_engine
from creditrelay.schema.errors import DatabaseUnavailable
from creditrelay.schema.transactions import is_not_writable, is_retryable, is_unavailable, run_transaction
from tests.support.database import Database
from tests.support.receiver import add_user


def refused(database: Database, sql: str) -> BaseException:
    def work(connection: Connection) -> None:
        connection.exec_driver_sql(sql)

    with pytest.raises(Exception) as caught:  # noqa: PT011 - the point is which type it is
        run_transaction(database.engine, work)
    return caught.value


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM no_such_table",
        "SELEC 1",
        "INSERT INTO users (id) VALUES (NULL, NULL)",
    ],
)
def test_a_statement_the_database_refuses_is_not_an_outage(database: Database, sql: str) -> None:
    """No such table, a syntax error, a wrong column count: a DBAPI error of its own, never 503."""
    error = refused(database, sql)
    assert not isinstance(error, DatabaseUnavailable)
    assert isinstance(error, sa.exc.DBAPIError)


def test_too_many_sql_variables_is_not_an_outage(database: Database) -> None:
    """SQLite's "too many SQL variables" is a statement too big, not a database away."""
    if database.kind != "sqlite":
        pytest.skip("SQLite's limit")

    def work(connection: Connection) -> None:
        connection.exec_driver_sql(f"SELECT 1 IN ({','.join('?' * 300_000)})", (1,) * 300_000)

    with pytest.raises(sa.exc.OperationalError, match="too many SQL variables"):
        run_transaction(database.engine, work)


def test_sqlite_integer_overflow_is_not_an_outage(database: Database) -> None:
    """A SUM past 2^63 (SQLite raises "integer overflow") is the query's failure, not a 503."""
    if database.kind != "sqlite":
        pytest.skip("SQLite's overflow")
    error = refused(database, "SELECT SUM(x) FROM (SELECT 9223372036854775807 AS x UNION ALL SELECT 1)")
    assert not isinstance(error, DatabaseUnavailable)
    assert "overflow" in str(error)


def test_a_database_away_is_an_outage(database: Database) -> None:
    """The write lock held elsewhere (SQLite) or the connection cut (MySQL): DatabaseUnavailable."""
    with database.fragile_engine() as (engine, outage), outage(), pytest.raises(DatabaseUnavailable):
        run_transaction(engine, lambda connection: connection.exec_driver_sql("SELECT 1"), attempts=1)


def test_a_statement_out_of_time_is_an_outage(database: Database) -> None:
    """A statement the server stopped for running too long (PostgreSQL's statement_timeout, MariaDB's
    max_statement_time) is the database's trouble, not the statement's: DatabaseUnavailable (503)."""
    if database.kind == "sqlite":
        pytest.skip("SQLite has no statement timeout")
    limit, sleep = (
        ("SET statement_timeout = 50", "SELECT pg_sleep(1)")
        if database.kind == "postgresql"
        else ("SET SESSION max_statement_time = 0.05", "SELECT SLEEP(1)")
    )

    def work(connection: Connection) -> None:
        connection.exec_driver_sql(limit)
        connection.exec_driver_sql(sleep)

    with pytest.raises(DatabaseUnavailable):
        run_transaction(database.engine, work)


def test_too_many_parameters_for_postgresql_is_not_an_outage(database: Database) -> None:
    """psycopg refuses to send a statement with more than 65,535 parameters: our statement too big, not
    the database away."""
    if database.kind != "postgresql":
        pytest.skip("PostgreSQL's limit")

    def work(connection: Connection) -> None:
        connection.exec_driver_sql(f"SELECT 1 IN ({','.join(['%s'] * 70_000)})", (1,) * 70_000)

    with pytest.raises(sa.exc.OperationalError, match="number of parameters") as caught:
        run_transaction(database.engine, work)
    assert not isinstance(caught.value, DatabaseUnavailable)


def test_a_lock_wait_times_out_within_the_lock_timeout_and_is_tried_once_more(database: Database) -> None:
    """A row locked elsewhere: the statement waits at most the engine's lock timeout, is tried once more,
    and the transaction is then DatabaseUnavailable (a 503 in seconds, not a request waiting for a day)."""
    engine = make_engine(database.url, lock_timeout=0.3)
    user_id = add_user(database.engine)
    tries = 0

    def work(connection: Connection) -> None:
        nonlocal tries
        tries += 1
        connection.execute(database.sql("UPDATE users SET balance = balance WHERE id = :id"), {"id": user_id})

    with database.engine.connect() as holder:
        holder.execute(database.sql("UPDATE users SET balance = balance WHERE id = :id"), {"id": user_id})
        try:
            with pytest.raises(DatabaseUnavailable):
                run_transaction(engine, work)
        finally:
            holder.rollback()
            engine.dispose()
    assert tries == (0 if database.kind == "sqlite" else 2)  # SQLite waits at BEGIN, for its one write lock


def _not_writable(database: Database) -> sa.exc.OperationalError:
    """What a server that cannot take writes now answers: PostgreSQL's read-only transaction (a standby, or
    a demoted primary: 25006), Galera's node not ready (1047); SQLite has no such server."""
    if database.kind == "postgresql":
        orig: Exception = psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
    else:
        orig = pymysql.err.OperationalError(1047, "WSREP has not yet prepared node for application use")
    return sa.exc.OperationalError("INSERT", None, orig)


@pytest.mark.parametrize("database", ["mysql", "postgresql"], indirect=True)
@pytest.mark.parametrize("held", [False, True], ids=["pooled", "held"])
def test_a_server_that_cannot_take_writes_is_left_for_a_new_connection(database: Database, held: bool) -> None:
    """A server that answers "not writable now" (a demoted primary, a Galera node not ready) is not asked
    again on the same connection: it is invalidated, and the work runs once more on a new one — which, with
    a multi-host URL, finds the server that takes writes — for a pooled connection and a writer's own."""
    engine = make_engine(database.url, pool_size=1)
    held_connection = engine.connect() if held else None
    drivers: list[object] = []

    def work(connection: Connection) -> None:
        drivers.append(connection.connection.dbapi_connection)
        if len(drivers) == 1:
            raise _not_writable(database)
        connection.execute(database.sql("UPDATE users SET balance = balance WHERE id = 0"))

    try:
        run_transaction(held_connection or engine, work, sleep=lambda _: None)
    finally:
        if held_connection is not None:
            held_connection.close()
        engine.dispose()
    assert len(drivers) == 2
    assert drivers[0] is not drivers[1]  # the second try had a connection of its own


@pytest.mark.parametrize("database", ["mysql", "postgresql"], indirect=True)
def test_a_server_that_stays_unwritable_is_a_503_after_one_more_try(database: Database) -> None:
    """Still not writable on the new connection: DatabaseUnavailable (503), after two tries, not five — a
    node that is not ready is not hammered, and the load balancer's health check routes around it."""
    tries = 0

    def work(_connection: Connection) -> None:
        nonlocal tries
        tries += 1
        raise _not_writable(database)

    with pytest.raises(DatabaseUnavailable):
        run_transaction(database.engine, work, sleep=lambda _: None)
    assert tries == 2


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_read_only_session_is_replaced_by_a_writable_one(database: Database) -> None:
    """A real 25006: the pooled connection's session was made read-only (as a demoted primary's are); the
    insert fails there, and the transaction commits on a new connection."""
    engine = make_engine(database.url, pool_size=1)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SET SESSION default_transaction_read_only = on")
            connection.commit()
        user_id = add_user(engine)
    finally:
        engine.dispose()
    assert database.count("users", "id = :id", id=user_id) == 1


@pytest.mark.parametrize(
    ("code", "message", "retried", "new_connection"),
    [
        (1213, "Deadlock found when trying to get lock; try restarting transaction", True, False),  # Galera
        (3101, "Plugin instructed the server to rollback the current transaction.", True, False),  # Group Replication
        (1047, "WSREP has not yet prepared node for application use", True, True),
        (1290, "The MariaDB server is running with the --read-only option", True, True),
        (1836, "Running in read-only mode", True, True),
        (1062, "Duplicate entry 'x' for key 'eventId'", False, False),
    ],
)
def test_what_a_mysql_cluster_answers_is_retried_or_left_for_another_connection(
    code: int, message: str, retried: bool, new_connection: bool
) -> None:
    """A certification conflict (Galera's 1213, Group Replication's 3101) runs the transaction again; a node
    not ready or read-only does too, on a new connection; each is an outage (503) once the retries are
    spent. A refused statement is none of these."""
    error = sa.exc.OperationalError("COMMIT", None, pymysql.err.OperationalError(code, message))
    assert is_retryable(error) is retried
    assert is_not_writable(error) is new_connection
    assert is_unavailable(error) is retried
