"""A database outage answers 503 (health too), writes nothing, and heals without a restart."""

import httpx

from receiver.app import create_app
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
