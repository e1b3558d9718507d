"""`creditrelay outbox purge` as an operator runs it: bounded chunks, and `--vacuum` to give space back."""

import os
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest

from creditrelay.schema.database import make_engine, utc
from creditrelay.sender.outbox import DEAD, DELIVERED, PENDING, metadata, outbox_events
from tests.support.cli import ok, run
from tests.support.database import Database
from tests.support.outbox import bulk_insert, rows

pytestmark = pytest.mark.slow  # each test starts the command line as a process


def test_purge_with_vacuum_shrinks_an_outbox_made_before_incremental_vacuum(tmp_path: Path) -> None:
    """An outbox made without auto-vacuum: `outbox purge --vacuum` deletes what is past the retention,
    rewrites the file at its new size, says so, and leaves it returning space by itself from then on."""
    path = tmp_path / "outbox.db"
    engine = make_engine(f"sqlite:///{path}")
    metadata.create_all(engine)  # as every outbox was made before incremental auto-vacuum
    now = utc(time.time())
    bulk_insert(engine, outbox_events, rows(0, 4000, now - timedelta(days=9), body="x" * 2000))
    bulk_insert(engine, outbox_events, rows(4000, 9, now, lambda i: (DELIVERED, DEAD, PENDING)[i % 3]))
    engine.dispose()
    before = os.path.getsize(path)

    answer = ok(None, "outbox", "purge", "--vacuum", "--outbox", f"sqlite:///{path}")

    assert answer["purged"] == 4000
    assert answer["bytesBefore"] >= before > answer["bytesAfter"]
    assert os.path.getsize(path) == answer["bytesAfter"] < before / 4
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA auto_vacuum").fetchone() == (2,)
        assert connection.execute("SELECT COUNT(*) FROM outbox_events").fetchone() == (9,)
    assert ok(None, "outbox", "status", "--outbox", f"sqlite:///{path}") == {"pending": 3, "delivered": 3, "dead": 3}


def test_vacuum_is_refused_where_the_database_reuses_space_itself(database: Database) -> None:
    """On MySQL and PostgreSQL `--vacuum` is refused, naming why, before anything is purged."""
    if database.kind == "sqlite":
        pytest.skip("SQLite is what --vacuum is for")
    bulk_insert(database.engine, outbox_events, rows(0, 5, utc(time.time()) - timedelta(days=9)))
    url = database.url.render_as_string(hide_password=False)
    result = run(None, "outbox", "purge", "--vacuum", "--outbox", url)
    assert result.returncode == 2
    assert "--vacuum" in result.stderr
    assert "reuse" in result.stderr
    assert "Traceback" not in result.stderr
    assert database.count("outbox_events") == 5
