"""Fixtures shared by every test: a migrated database on SQLite, MySQL and PostgreSQL, users, a running
receiver.

MySQL is reached at ``CREDITRELAY_TEST_MYSQL_URL`` (``make test`` sets it; default: the machine's MariaDB as
root), PostgreSQL at ``CREDITRELAY_TEST_POSTGRES_URL`` (default: the machine's, as postgres). Each
pytest-xdist worker gets a database of its own on each server, migrated once and emptied before each test.
Set either to ``skip`` to leave that server out (``make test-fast`` runs SQLite alone).
"""

import hashlib
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm, wherever it is imported: no download

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from creditrelay.receiver.app import create_app
from creditrelay.schema.database import make_engine
from creditrelay.schema.migrate import upgrade
from scripts.databases import recreate
from tests.support.database import Database, clean
from tests.support.fake_newapi import FakeNewApi, fake_newapi
from tests.support.receiver import Receiver, add_user, settings_for
from tests.support.server import serving

# without a URL given, databases named after this checkout (as scripts/test-services.sh names them), so that
# two checkouts testing at once on one server never drop each other's tables
_OWN = (
    "creditrelay_test_"
    + hashlib.sha1(str(Path(__file__).resolve().parents[1]).encode(), usedforsecurity=False).hexdigest()[:8]
)
MYSQL_URL = os.environ.get("CREDITRELAY_TEST_MYSQL_URL", f"mysql+pymysql://root@127.0.0.1:3306/{_OWN}")
POSTGRES_URL = os.environ.get("CREDITRELAY_TEST_POSTGRES_URL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{_OWN}")
KINDS = ["sqlite"] + ([] if MYSQL_URL == "skip" else ["mysql"]) + ([] if POSTGRES_URL == "skip" else ["postgresql"])


def _server_database(setting: str, given: str, worker_id: str) -> URL:
    """This worker's database on the server ``given`` names, new and migrated."""
    if given == "skip":
        pytest.skip(f"{setting}=skip: without this database")
    base = sa.make_url(given)
    url = base.set(database=f"{base.database}_{worker_id}")
    try:
        url = recreate(url)
    except sa.exc.OperationalError as error:
        pytest.fail(f"{base.host}:{base.port} is not reachable ({error.orig}); run make test, which starts it")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def mysql_url(worker_id: str) -> URL:
    return _server_database("CREDITRELAY_TEST_MYSQL_URL", MYSQL_URL, worker_id)


@pytest.fixture(scope="session")
def postgres_url(worker_id: str) -> URL:
    return _server_database("CREDITRELAY_TEST_POSTGRES_URL", POSTGRES_URL, worker_id)


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = sa.make_url(f"sqlite:///{tmp_path / 'creditrelay.db'}")
        engine = make_engine(url, busy_timeout_ms=10_000)
        upgrade(engine)
    else:
        url = request.getfixturevalue("mysql_url" if request.param == "mysql" else "postgres_url")
        engine = make_engine(url)
        clean(engine)
    try:
        yield Database(request.param, url, engine)
    finally:
        engine.dispose()


@pytest.fixture
def receiver(database: Database) -> Iterator[Receiver]:
    """The receiver under uvicorn on a loopback socket, with alice (1000 credits) owning gateway key 1."""
    user_id = add_user(database.engine)
    app = create_app(settings_for(database), database.engine)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Receiver(url, client, user_id)


@pytest.fixture
def api() -> Iterator[FakeNewApi]:
    """A fake new-api on a loopback socket, answering as new-api does."""
    with fake_newapi() as fake:
        yield fake
