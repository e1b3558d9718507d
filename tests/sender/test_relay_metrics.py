"""The sidecar's /metrics: the relay's attempts, request sizes and the outbox's states, as Prometheus text."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

from creditrelay.schema.signing import WebhookSecret
from creditrelay.sender.delivery import Signer
from creditrelay.sender.outbox import Outbox
from creditrelay.sender.relay import OutboxRelay, RelayConfig
from creditrelay.sender.sidecar import create_sidecar
from tests.support.database import Database
from tests.support.server import serving
from tests.support.signing import SECRET


def test_metrics_name_the_outbox_states_and_the_relay_counters(database: Database) -> None:
    outbox = Outbox(database.engine)
    relay = OutboxRelay(
        outbox, Signer(WebhookSecret.parse(SECRET)), RelayConfig(url="http://127.0.0.1:9/api/webhooks/events")
    )
    app = create_sidecar(outbox, relay)
    with serving(app) as url, httpx.Client(base_url=url) as client:
        accepted = client.post("/events", json=[{"eventId": "e1", "eventType": "ping", "timestamp": 1, "data": {}}])
        assert accepted.status_code == 202
        text = client.get("/metrics").text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert (
        samples[("creditrelay_relay_outbox_events", (("status", "pending"),))]
        + samples[("creditrelay_relay_outbox_events", (("status", "delivered"),))]
        + samples[("creditrelay_relay_outbox_events", (("status", "dead"),))]
        == 1
    )
    assert ("creditrelay_relay_in_flight", ()) in samples
    assert any(name == "creditrelay_relay_request_events_count" for name, _ in samples)


def test_an_outbox_out_of_reach_is_a_503_that_accepts_nothing_then_recovers(database: Database) -> None:
    """The outbox's database is away (a cut connection; on SQLite another process's write lock): the
    sidecar answers 503 (send again) with nothing stored, not a traceback; afterwards 202."""
    event = [{"eventId": "e1", "eventType": "ping", "timestamp": 1, "data": {}}]
    with database.fragile_engine() as (engine, outage):
        outbox = Outbox(engine)
        relay = OutboxRelay(
            outbox, Signer(WebhookSecret.parse(SECRET)), RelayConfig(url="http://127.0.0.1:9/api/webhooks/events")
        )
        with serving(create_sidecar(outbox, relay)) as url, httpx.Client(base_url=url, timeout=30) as client:
            with outage():
                answer = client.post("/events", json=event)
            assert answer.status_code == 503
            assert answer.json() == {
                "success": False,
                "message": "The outbox's database is unavailable; send again",
            }
            assert database.count("outbox_events") == 0
            assert client.post("/events", json=event).status_code == 202
    assert database.count("outbox_events") == 1
