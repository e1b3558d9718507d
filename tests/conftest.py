"""Fixtures shared by every test: a migrated database on SQLite and on MySQL, users, a running receiver.

MySQL is reached at ``CREDITRELAY_TEST_MYSQL_URL`` (``make test`` sets it; default: the machine's MariaDB as
root). Each pytest-xdist worker gets a database of its own, migrated once and emptied before each test.
Set ``CREDITRELAY_TEST_MYSQL_URL=skip`` to run the SQLite half alone on a machine without MySQL.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from creditrelay.receiver.app import create_app
from creditrelay.schema.database import make_engine
from creditrelay.schema.migrate import upgrade
from tests.support.database import Database, clean
from tests.support.fake_newapi import FakeNewApi, fake_newapi
from tests.support.receiver import Receiver, add_user, settings_for
from tests.support.server import serving

MYSQL_URL = os.environ.get("CREDITRELAY_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/creditrelay_test")
KINDS = ["sqlite"] + ([] if MYSQL_URL == "skip" else ["mysql"])


@pytest.fixture(scope="session")
def mysql_url(worker_id: str) -> URL:
    if MYSQL_URL == "skip":
        pytest.skip("CREDITRELAY_TEST_MYSQL_URL=skip: the SQLite half alone")
    base = sa.make_url(MYSQL_URL)
    name = f"{base.database}_{worker_id}"
    admin = sa.create_engine(base._replace(database=None))
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            connection.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    except sa.exc.OperationalError as error:
        pytest.fail(f"MySQL is not reachable at {base.host}:{base.port} ({error.orig}); run make test, which starts it")
    finally:
        admin.dispose()
    url = base.set(database=name)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = sa.make_url(f"sqlite:///{tmp_path / 'creditrelay.db'}")
        engine = make_engine(url, busy_timeout_ms=10_000)
        upgrade(engine)
    else:
        url = request.getfixturevalue("mysql_url")
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
