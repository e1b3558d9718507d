"""schema/database.py's transactions: only a lost or refused connection is an outage; a refused statement is its own
unit of work's failure. Errors raised by the real drivers on both databases."""

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.database import DatabaseUnavailable, run_transaction
from tests.support.database import Database


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
