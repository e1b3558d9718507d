"""`/api/info` and `/metrics`: what operators read, parsed the way Prometheus parses it."""

import dataclasses
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from creditrelay.billing.gateways.newapi import NewApiClient
from creditrelay.billing.polling import PollConfig, Poller, advance_watermark
from creditrelay.receiver.app import create_app
from creditrelay.schema.database import utc
from creditrelay.schema.transactions import run_transaction
from scripts.processes import free_port, start, stop, wait_healthy
from tests.support.database import Database
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi
from tests.support.receiver import Receiver, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import SECRET, encode, seed_headers, usage_event


def samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    found = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def charged(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return found.get(("creditrelay_webhook_events_total", (("outcome", "charged"),)), 0.0)


def test_metrics_parse_and_move_when_events_arrive(receiver: Receiver, database: Database) -> None:
    """A charge, a duplicate and a forged request each move their counter; batches and latency are observed."""
    before = samples(receiver.client)
    body = encode(usage_event("evt-m"))
    receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
    receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
    receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body, "y" * 40))
    run_transaction(database.engine, lambda c: advance_watermark(c, int(time.time()) - 90, utc(time.time())))
    after = samples(receiver.client)

    def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert delta("creditrelay_webhook_events_total", (("outcome", "charged"),)) == 1
    assert delta("creditrelay_webhook_events_total", (("outcome", "duplicate"),)) == 1
    assert delta("creditrelay_webhook_events_total", (("outcome", "unauthenticated"),)) == 1
    assert delta("creditrelay_webhook_request_seconds_count") == 3
    assert delta("creditrelay_batch_events_count") == 2
    assert 89 <= after[("creditrelay_poll_lag_seconds", ())] < 200


def test_every_refusal_is_counted_once_under_its_own_outcome(receiver: Receiver) -> None:
    """Outcomes of billing (counted per committed batch) and refusals before it (counted by the route)
    never double up: a conflict, an unknown key, an invalid body and an ignored event move one counter each."""
    first, other = encode(usage_event("evt-c", cost=1)), encode(usage_event("evt-c", cost=2))
    unknown, ignored = (
        encode(usage_event("evt-u", key="no-such-key")),
        encode({**usage_event("evt-i"), "eventType": "x"}),
    )
    before = samples(receiver.client)
    answers = [
        receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body)).status_code
        for body in (first, other, unknown, ignored, b"[]")
    ]
    after = samples(receiver.client)
    assert answers == [200, 409, 422, 200, 400]
    moved = {
        labels[0][1]: after[(name, labels)] - before.get((name, labels), 0.0)
        for name, labels in after
        if name == "creditrelay_webhook_events_total" and after[(name, labels)] != before.get((name, labels), 0.0)
    }
    assert moved == {"charged": 1, "conflict": 1, "unbillable": 1, "ignored": 1, "invalid": 1}


def test_info_says_what_is_enabled(receiver: Receiver, database: Database) -> None:
    """Version, database kind and the enabled parts."""
    data = receiver.client.get("/api/info").json()["data"]
    assert data["name"] == "creditrelay"
    assert data["version"]
    assert data["database"] == database.kind
    assert data["enabled"] == {
        "polling": False, "creditApi": True, "admin": False, "rateLimit": None, "enforcement": "off", "alerts": False,
    }  # fmt: skip


def test_info_says_polling_only_when_serve_polls(database: Database, api: FakeNewApi) -> None:
    """NEW_API_* alone is what `poll` and `reconcile` read: serve polls only with POLL_INTERVAL, and says so."""
    for interval, polls in ((None, False), (60.0, True)):
        settings = dataclasses.replace(
            settings_for(database),
            poll_interval=interval,
            new_api_base_url=api.url,
            new_api_admin_token=ADMIN_TOKEN,
            new_api_user_id=ADMIN_USER,
        )
        poller = Poller(database.engine, NewApiClient(api.url, ADMIN_TOKEN, ADMIN_USER), PollConfig())
        app = create_app(settings, database.engine, poller=poller if interval else None)
        with serving(app) as url:
            assert httpx.get(f"{url}/api/info").json()["data"]["enabled"]["polling"] is polls


@pytest.mark.slow
def test_metrics_add_up_across_workers(database: Database, tmp_path: Path) -> None:
    """With --workers 2, whichever worker answers the scrape reports the events both workers charged."""
    add_user(database.engine)
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": database.url.render_as_string(hide_password=False),
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}  # fmt: skip
    log = tmp_path / "serve.log"
    server = start(["serve", "--port", str(port), "--workers", "2"], env, log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/webhooks/health", server, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for i in range(40):
                body = encode(usage_event(f"evt-w{i}"))
                with httpx.Client(base_url=client.base_url) as fresh:  # new connections spread over workers
                    assert (
                        fresh.post("/api/webhooks/events", content=body, headers=seed_headers(body)).status_code == 200
                    )
            scrapes = [charged(samples(httpx.Client(base_url=client.base_url))) for _ in range(6)]
    finally:
        stop(server)
    assert scrapes == [40.0] * 6
    assert database.count("usage_records") == 40
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2, "both workers charged events"


def test_business_counters_move_with_what_was_committed(database: Database) -> None:
    """Credits charged by webhook (duplicates not again), topped up and taken back from the admin pages
    and the credit API (by client), credit API answers by status, admin replays by outcome, and the users
    below zero and suspended as gauges."""
    import dataclasses

    from creditrelay.receiver.app import create_app
    from tests.support.credits import add_telegram_user, register_client, signed
    from tests.support.receiver import settings_for
    from tests.support.server import serving

    alice = add_user(database.engine)
    add_telegram_user(database.engine, credits=10)
    creds = register_client(database.engine, "shop")
    app = create_app(dataclasses.replace(settings_for(database), admin_token="t" * 32), database.engine)
    with serving(app) as url, httpx.Client(base_url=url) as client:
        before = samples(client)
        for body in (encode(usage_event("m1", cost=7)), encode(usage_event("m1", cost=7)),
                     encode(usage_event("m2", cost=5, key="k-late"))):  # fmt: skip
            client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
        headers = {"X-Api-Key": creds.api_key}
        assert (
            client.post("/api/credits/sync", json=signed(creds, 30, reference="o-1"), headers=headers).status_code
            == 200
        )
        assert (
            client.post("/api/credits/sync", json=signed(creds, -12, reference="o-2"), headers=headers).status_code
            == 200
        )
        assert (
            client.post("/api/credits/sync", json=signed(creds, -999, reference="o-3"), headers=headers).status_code
            == 402
        )
        assert client.get("/api/credits/balance/123456789", headers={"X-Api-Key": "wrong"}).status_code == 401
        client.post("/admin/login", data={"token": "t" * 32})
        csrf = client.get("/admin/").text.split('name="csrf" value="')[1].split('"')[0]
        user = f"/admin/users/{alice}"
        client.post(f"{user}/topup", data={"csrf": csrf, "amount": "100", "reference": "r1"})
        client.post(f"{user}/topup", data={"csrf": csrf, "amount": "100", "reference": "r1"})  # once
        client.post(f"{user}/correct", data={"csrf": csrf, "amount": "2000", "reference": "c", "reason": "x"})
        client.post(f"{user}/keys", data={"csrf": csrf, "remote_key_id": "k-late"})  # replays m2
        after = samples(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("creditrelay_credits_charged_total", source="webhook") == 7  # m1 once
    assert delta("creditrelay_credits_charged_total", source="replay") == 5  # m2, once its key was linked
    assert delta("creditrelay_credits_topped_up_total", source="credit_api:shop") == 30
    assert delta("creditrelay_credits_deducted_total", source="credit_api:shop") == 12
    assert delta("creditrelay_credits_topped_up_total", source="admin") == 100
    assert delta("creditrelay_credits_deducted_total", source="admin") == 2000
    assert delta("creditrelay_credit_api_requests_total", endpoint="sync", status="200") == 2
    assert delta("creditrelay_credit_api_requests_total", endpoint="sync", status="402") == 1
    assert delta("creditrelay_credit_api_requests_total", endpoint="balance", status="401") == 1
    assert delta("creditrelay_admin_replays_total", outcome="charged") == 1
    assert after[("creditrelay_users_below_zero", ())] == 1  # alice: 1000 - 7 + 100 - 2000 - 5
    assert ("creditrelay_users_suspended", ()) in after
