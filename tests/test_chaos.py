"""A small `make chaos` in every test run: kills and a database cut while events flow, on MySQL and
PostgreSQL."""

from pathlib import Path

import pytest

from scripts.chaos import run_chaos
from tests.support.database import Database

pytestmark = pytest.mark.slow  # processes killed or many commands run: make test runs it, make test-fast does not


@pytest.mark.parametrize("database", ["mysql", "postgresql"], indirect=True)  # servers a proxy can cut
def test_kills_and_a_database_cut_lose_nothing_and_charge_nothing_twice(database: Database, tmp_path: Path) -> None:
    """300 usages (a fifth re-sent under new event ids), receiver killed twice, relay once, database cut once."""
    report = run_chaos(
        database.url.render_as_string(hide_password=False), tmp_path, events=300, receiver_kills=2,
        restart_database=False,
    )  # fmt: skip
    assert report.startswith("exactly once: OK")
    assert "usages 300 charged 300 times" in report
