"""A database outage answers 503 (health too), writes nothing, and heals without a restart."""

import httpx
import pytest

from creditrelay.cli.server import schema_is_current
from creditrelay.receiver.app import create_app
from creditrelay.schema.migrate import is_current
from tests.support.database import Database
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event


def test_database_outage_is_503_then_recovers_without_restart(database: Database) -> None:
    """While the database is away: 503 on events and health, nothing half-written; afterwards: 200."""
    user_id = add_user(database.engine)
    with database.fragile_engine() as (engine, outage):
        app = create_app(settings_for(database), engine)
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            body = encode(usage_event("evt-outage", cost=40))
            assert client.get("/api/webhooks/health").status_code == 200
            with outage():
                reply = client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
                assert reply.status_code == 503
                assert reply.json() == {"success": False, "message": "Database unavailable, retry later"}
                health = client.get("/api/webhooks/health")
                assert health.status_code == 503
                assert health.json()["success"] is False
            assert database.count("webhook_logs") == 0
            assert database.count("usage_records") == 0

            assert client.get("/api/webhooks/health").status_code == 200
            retried = client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
            assert retried.status_code == 200
            assert retried.json()["duplicate"] is False
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=user_id) == OPENING - 40


@pytest.mark.parametrize("database", ["mysql", "postgresql"], indirect=True)  # SQLite has no server to be away
def test_serve_comes_up_during_a_database_outage(database: Database) -> None:
    """The start-up schema check waits for the database, then lets serve start instead of crashing."""
    with database.fragile_engine() as (engine, outage), outage():
        assert schema_is_current(engine, is_current, wait=1.0) is None
    assert schema_is_current(database.engine, is_current, wait=1.0) is True
