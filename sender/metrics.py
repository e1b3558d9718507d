"""The relay's Prometheus metrics: attempts by outcome, delivery latency, request sizes and what is in
flight, counted as the relay works; and the outbox's pending, delivered and dead, read when scraped."""

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from creditrelay.sender.outbox import Outbox

ATTEMPTS = Counter("creditrelay_relay_attempts", "Delivery attempts by outcome", ["outcome"])
LATENCY = Histogram("creditrelay_relay_request_seconds", "Time from sending a request to its answer")
BATCH = Histogram("creditrelay_relay_request_events", "Events per request", buckets=(1, 10, 25, 50, 100, 250, 500))
IN_FLIGHT = Gauge("creditrelay_relay_in_flight", "Events claimed and being delivered")
PURGED = Counter("creditrelay_relay_purged_events", "Events the relay purged past its retention")
PURGE_FAILURES = Counter("creditrelay_relay_purge_failures", "The relay's purges that failed (it went on delivering)")


class OutboxCollector(Collector):
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self.outbox.counts()
        except SQLAlchemyError:
            return
        family = GaugeMetricFamily(
            "creditrelay_relay_outbox_events", "Events in the outbox by state", labels=["status"]
        )
        for status, count in counts.items():
            family.add_metric([status], float(count))
        yield family


def exposition(outbox: Outbox) -> bytes:
    registry = CollectorRegistry()
    registry.register(OutboxCollector(outbox))
    return generate_latest(REGISTRY) + generate_latest(registry)
