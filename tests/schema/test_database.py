"""schema/database.py: the one conversion from Unix seconds to the stored datetime, and the URLs an engine
is made from."""

from datetime import UTC, datetime

import httpx
import pytest

from creditrelay.receiver.app import create_app
from creditrelay.schema.database import make_engine, utc
from creditrelay.settings import parse_database_url
from scripts.processes import free_port
from tests.support.database import Database
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event


@pytest.mark.parametrize(
    "seconds", [0, 1, 1_767_225_600, 1_767_225_600.5, 1_767_225_600.123456, 1_767_225_600.1234565, 253_402_300_799]
)
def test_utc_is_the_zone_free_value_of_fromtimestamp(seconds: float) -> None:
    assert utc(seconds) == datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_url_naming_several_hosts_connects_to_the_one_that_takes_writes(database: Database) -> None:
    """DATABASE_URL names two PostgreSQL hosts with ``target_session_attrs=read-write`` (a primary and its
    standby, either of which may be the primary after a failover), the first not listening: creditrelay
    connects to the second, and the receiver charges an event there."""
    given = database.url
    hosts = f"host=127.0.0.1:{free_port()}&host={given.host}:{given.port or 5432}"
    url = parse_database_url(f"postgresql://{given.username}@/{given.database}?{hosts}&target_session_attrs=read-write")
    user_id = add_user(database.engine)
    engine = make_engine(url)
    try:
        with serving(create_app(settings_for(database), engine)) as base, httpx.Client(base_url=base) as client:
            body = encode(usage_event("evt-multi-host", cost=40))
            reply = client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
            assert reply.status_code == 200, reply.text
            assert client.get("/api/webhooks/health").status_code == 200
    finally:
        engine.dispose()
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=user_id) == OPENING - 40
