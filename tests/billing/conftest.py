"""Billing tests call the ledger directly inside transactions they own (helpers: tests/support/ledger.py)."""

import pytest

from tests.support.ledger import force_row_counts


@pytest.fixture(params=["returning", "row_count"])
def insert_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of learning which rows an insert wrote: ``RETURNING`` (SQLite, MariaDB, PostgreSQL) and, as on MySQL,
    row counts with savepoints and ids read back (forced here on the databases that could return)."""
    if request.param == "row_count":
        force_row_counts(monkeypatch)
    return str(request.param)
