"""A migrated database of any kind, and a way to make it unavailable the way that kind fails."""

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from creditrelay.billing.rules import LedgerRules, with_rules
from creditrelay.schema.database import make_engine
from creditrelay.schema.tables import metadata
from scripts.tcp_proxy import TcpProxy

TABLES = tuple(t.name for t in reversed(metadata.sorted_tables))  # children before parents
# The tables' camelCase column names: PostgreSQL folds an unquoted name to lower case, so the tests' SQL
# (written as an operator writes it for SQLite and MySQL, unquoted) has them quoted there.
CAMEL = sorted({c.name for t in metadata.tables.values() for c in t.columns if c.name != c.name.lower()}, key=len)
_NAMES = re.compile(r"(?<![\w\"`])(" + "|".join(reversed(CAMEL)) + r")(?![\w\"`])")


def portable(sql: str, dialect_name: str) -> str:
    """``sql`` as PostgreSQL needs it: camelCase column names quoted (outside string literals)."""
    if dialect_name != "postgresql":
        return sql
    parts = sql.split("'")  # even parts are outside string literals ('' inside one splits into two odd ones)
    return "'".join(_NAMES.sub(r'"\1"', part) if i % 2 == 0 else part for i, part in enumerate(parts))


@dataclass
class Database:
    kind: str
    url: URL
    engine: Engine
    _extra: list[Engine] = field(default_factory=list)

    def rule(self, rules: LedgerRules) -> None:
        """From now on, the ledger's transactions on ``engine`` follow ``rules`` (as ``serve`` opens it)."""
        self.engine = with_rules(self.engine, rules)

    def sql(self, text: str) -> sa.TextClause:
        """Ad-hoc SQL as written for any database (camelCase names quoted where PostgreSQL needs it)."""
        return sa.text(portable(text, self.kind))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(self.sql(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(self.sql(sql), params))

    def execute(self, sql: str, **params: Any) -> None:
        """Run a statement and commit it (as an operator's ad-hoc SQL would)."""
        with self.engine.begin() as connection:
            connection.execute(self.sql(sql), params)

    def count(self, table: str, where: str = "1=1", **params: Any) -> int:
        return int(self.scalar(f"SELECT COUNT(*) FROM {table} WHERE {where}", **params))

    def snapshot(self) -> dict[str, Any]:
        """Everything a request could change: row counts and balances."""
        counts = {table: self.count(table) for table in TABLES}
        balances = self.rows("SELECT id, balance FROM users ORDER BY id")
        return {"counts": counts, "balances": [tuple(r) for r in balances]}

    @contextmanager
    def fragile_engine(self) -> Iterator[tuple[Engine, Any]]:
        """An engine plus a context manager that makes the database unavailable to it while open.

        MySQL and PostgreSQL: the engine reaches the server through a TCP proxy that the outage cuts (as if
        the server stopped). SQLite has no server: the outage is another process holding the database's write
        lock.
        """
        if self.kind in ("mysql", "postgresql"):
            port = self.url.port or (3306 if self.kind == "mysql" else 5432)
            with TcpProxy(self.url.host or "127.0.0.1", port) as proxy:
                engine = make_engine(self.url.set(host="127.0.0.1", port=proxy.port))

                @contextmanager
                def outage() -> Iterator[None]:
                    proxy.cut()
                    try:
                        yield
                    finally:
                        proxy.restore()

                try:
                    yield engine, outage
                finally:
                    engine.dispose()
            return
        engine = make_engine(self.url, busy_timeout_ms=300)

        @contextmanager
        def locked() -> Iterator[None]:
            holder = sqlite3.connect(str(self.url.database), isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                holder.execute("ROLLBACK")
                holder.close()

        try:
            yield engine, locked
        finally:
            engine.dispose()


def clean(engine: Engine) -> None:
    with engine.begin() as connection:  # DELETE: PostgreSQL's TRUNCATE takes 20 times as long here
        for table in TABLES:
            connection.execute(sa.text(f"DELETE FROM {table}"))


def certification_conflict() -> Exception:
    """The error a Galera node raises when another node's commit certified first: a deadlock (1213)."""
    return pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock; try restarting transaction")


def conflicting_show_warnings(monkeypatch: pytest.MonkeyPatch, conflicting: Callable[[], bool]) -> None:
    """pymysql's own ``show_warnings`` (called outside SQLAlchemy) raises a certification conflict while
    ``conflicting()`` says so, and reads the warnings otherwise."""
    real: Callable[[Any], Any] = pymysql.connections.Connection.show_warnings

    def show_warnings(self: Any) -> Any:
        if conflicting():
            raise certification_conflict()
        return real(self)

    monkeypatch.setattr(pymysql.connections.Connection, "show_warnings", show_warnings)
