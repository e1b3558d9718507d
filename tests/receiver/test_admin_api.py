"""The admin JSON API: refuses without the token; finds users, failed events, replays, tops up, counts."""

import dataclasses
from collections.abc import Iterator

import httpx
import pytest

from creditrelay.billing.accounts import link_key
from creditrelay.receiver.app import create_app
from creditrelay.schema.database import utc
from creditrelay.schema.transactions import run_transaction
from tests.support.database import Database
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event

TOKEN = "admin-token-admin-token-admin-token-42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin(database: Database) -> Iterator[httpx.Client]:
    add_user(database.engine)
    app = create_app(dataclasses.replace(settings_for(database), admin_token=TOKEN), database.engine)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def test_admin_api_refuses_without_the_token(admin: httpx.Client, database: Database) -> None:
    """No token, a wrong token, or another scheme: 401 on every admin route; disabled without ADMIN_TOKEN: 403."""
    for path in ("/api/admin/users?q=a", "/api/admin/users/1", "/api/admin/webhook-logs", "/api/admin/stats"):
        assert admin.get(path).status_code == 401
        assert admin.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert admin.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert admin.post("/api/admin/webhook-logs/x/replay").status_code == 401
    app = create_app(settings_for(database), database.engine)
    with serving(app) as url:
        assert httpx.get(f"{url}/api/admin/stats", headers=AUTH).status_code == 403


def test_find_a_failed_event_link_its_key_replay_it(admin: httpx.Client, database: Database) -> None:
    """The operator's loop: search the user, see the failed delivery, link the key, replay, see the charge."""
    body = encode(usage_event("evt-lost", key="k-new", cost=25))
    assert admin.post("/api/webhooks/events", content=body, headers=seed_headers(body)).status_code == 422

    [alice] = admin.get("/api/admin/users", params={"q": "alice"}, headers=AUTH).json()["data"]
    failed = admin.get("/api/admin/webhook-logs", params={"status": "failed"}, headers=AUTH).json()["data"]
    assert [(f["eventId"], "k-new" in f["errorMsg"]) for f in failed] == [("evt-lost", True)]

    run_transaction(database.engine, lambda c: link_key(c, "k-new", alice["id"], utc(1_800_000_000)))
    replayed = admin.post("/api/admin/webhook-logs/evt-lost/replay", headers=AUTH).json()["data"]
    assert replayed == {"eventId": "evt-lost", "status": "charged", "error": None}
    detail = admin.get(f"/api/admin/users/{alice['id']}", headers=AUTH).json()["data"]
    assert detail["balance"] == OPENING - 25
    assert detail["keys"] == ["1", "k-new"]
    assert detail["transactions"][0]["usage"]["eventId"] == "evt-lost"
    assert admin.get("/api/admin/users", params={"q": "k-new"}, headers=AUTH).json()["data"][0]["id"] == alice["id"]


def test_top_up_needs_a_reference_and_applies_once(admin: httpx.Client, database: Database) -> None:
    """A repeated form submit is a duplicate; a missing reference is refused."""
    [alice] = admin.get("/api/admin/users", params={"q": "alice@"}, headers=AUTH).json()["data"]
    url = f"/api/admin/users/{alice['id']}/topup"
    assert admin.post(url, json={"amount": 5}, headers=AUTH).status_code == 400
    nobody = admin.post("/api/admin/users/999999/topup", json={"amount": 5, "reference": "r"}, headers=AUTH)
    assert nobody.status_code == 404
    first = admin.post(url, json={"amount": 50, "reference": "ticket-9"}, headers=AUTH).json()["data"]
    again = admin.post(url, json={"amount": 50, "reference": "ticket-9"}, headers=AUTH).json()["data"]
    assert (first, again) == (
        {"balance": OPENING + 50, "duplicate": False},
        {"balance": OPENING + 50, "duplicate": True},
    )


def test_logs_page_and_stats_count(admin: httpx.Client) -> None:
    """Logs page newest first with `before`; stats count the last hour by status."""
    for i in range(5):
        body = encode(usage_event(f"evt-{i}"))
        admin.post("/api/webhooks/events", content=body, headers=seed_headers(body))
    first = admin.get("/api/admin/webhook-logs", params={"limit": 2}, headers=AUTH).json()["data"]
    rest = admin.get("/api/admin/webhook-logs", params={"limit": 10, "before": first[-1]["id"]}, headers=AUTH).json()
    assert [e["eventId"] for e in first] == ["evt-4", "evt-3"]
    assert [e["eventId"] for e in rest["data"]] == ["evt-2", "evt-1", "evt-0"]
    assert admin.get("/api/admin/webhook-logs", params={"status": "lost"}, headers=AUTH).status_code == 400
    stats = admin.get("/api/admin/stats", headers=AUTH).json()["data"]
    assert stats["lastHour"]["byStatus"]["processed"] == 5
    assert sum(stats["lastHour"]["perMinute"]) == 5
    assert stats["failedTotal"] == 0
