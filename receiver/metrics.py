"""Prometheus metrics for `/metrics`: events by outcome, latencies, batch sizes, polling lag, reconcile; the
credits charged, topped up and deducted, credit API answers and admin replays; users below zero and
suspended.

Under ``serve --workers N`` each worker writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` (``serve`` sets
one up) and a scrape of any worker adds them all up. Polling lag and the last reconcile result are read
from the database at scrape time, so they are right whoever polls (``serve`` or cron) and however many
instances run.
"""

import os
import time
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from creditrelay.billing.gauges import read_gauges
from creditrelay.billing.polling import PollReport
from creditrelay.schema.errors import DatabaseUnavailable
from creditrelay.schema.transactions import run_transaction

EVENTS = Counter("creditrelay_webhook_events", "Webhook deliveries by outcome", ["outcome"])
REQUEST_SECONDS = Histogram(
    "creditrelay_webhook_request_seconds",
    "Time from a webhook request's arrival to its answer",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
COMMIT_SECONDS = Histogram(
    "creditrelay_batch_commit_seconds",
    "Time to apply and commit one group-commit batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "creditrelay_batch_events", "Events per committed batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
WRITER_FAILURES = Counter(
    "creditrelay_writer_failures", "Group-commit batches whose handling failed outside billing (their requests got 500)"
)
WRITER_RESTARTS = Counter("creditrelay_writer_restarts", "Group-commit writers found stopped and started again")
LOG_LINES_DROPPED = Counter("creditrelay_log_lines_dropped", "Log lines that could not be rendered or written")
POLL_PASSES = Counter("creditrelay_poll_passes", "Background polling passes by outcome", ["outcome"])
BATCH_EVENTS = Histogram(
    "creditrelay_webhook_batch_events", "Events per POST /api/webhooks/batch", buckets=(1, 10, 50, 100, 250, 500)
)
GATEWAY_CALLS = Counter(
    "creditrelay_gateway_calls", "Calls to the gateway to suspend or resume, by outcome", ["outcome"]
)
# The business dashboard's counters: credits moved by what this process committed, by the path they came
CREDITS_CHARGED = Counter(
    "creditrelay_credits_charged", "Credits of usages charged (not duplicates), by how they came", ["source"]
)
CREDITS_ADDED = Counter("creditrelay_credits_topped_up", "Credits added to balances, by who added them", ["source"])
CREDITS_DEDUCTED = Counter(
    "creditrelay_credits_deducted", "Credits taken off balances other than usage, by who took them", ["source"]
)
CREDIT_API_ANSWERS = Counter(
    "creditrelay_credit_api_requests", "Credit API answers, by endpoint and HTTP status", ["endpoint", "status"]
)
REFUSED_CONNECTIONS = Counter(
    "creditrelay_http_refused",
    "Requests refused before they reached the app: head too large or too slow, malformed",
    ["reason"],
)
UNAUTHENTICATED = Counter(
    "creditrelay_unauthenticated_requests", "Requests refused for a missing or wrong signature or key", ["endpoint"]
)
UNEXPECTED_ERRORS = Counter("creditrelay_unexpected_errors", "Requests answered 500 for a bug of ours")
ADMIN_REPLAYS = Counter(
    "creditrelay_admin_replays", "Failed deliveries run again from the admin pages or API, by outcome", ["outcome"]
)


def count_polled(report: PollReport) -> None:
    """What one committed slice of a polling pass charged."""
    if report.credits_charged:
        CREDITS_CHARGED.labels("poll").inc(report.credits_charged)


class LedgerCollector(Collector):
    """Gauges read from the database on each scrape."""

    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        try:
            gauges = run_transaction(self.engine, read_gauges, read_only=True, attempts=1)
        except (SQLAlchemyError, DatabaseUnavailable):
            return
        for name, text, value in (
            ("creditrelay_users_below_zero", "Users whose balance is below zero", gauges.below_zero),
            ("creditrelay_users_suspended", "Users whose latest word to the gateway is a suspension", gauges.suspended),
            (
                "creditrelay_gateway_intents_pending",
                "Suspensions and resumptions the gateway has not confirmed",
                gauges.pending,
            ),
        ):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], float(value))
            yield gauge
        by_status = GaugeMetricFamily("creditrelay_alerts", "Alerts waiting or given up on", labels=["status"])
        by_status.add_metric(["pending"], float(gauges.alerts_pending))
        by_status.add_metric(["dead"], float(gauges.alerts_dead))
        yield by_status
        if gauges.watermark is not None:
            lag = GaugeMetricFamily("creditrelay_poll_lag_seconds", "Seconds since the last billed upstream log")
            lag.add_metric([], max(0.0, self.clock() - float(gauges.watermark)))
            yield lag
        if gauges.discrepancies is not None:
            found = GaugeMetricFamily(
                "creditrelay_reconcile_discrepancies", "Discrepancies found by the last reconcile"
            )
            found.add_metric([], float(gauges.discrepancies))
            yield found


def _registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def event_counts() -> dict[str, float]:
    """Webhook deliveries by outcome since the server started, all workers added up."""
    counts: dict[str, float] = {}
    for family in _registry().collect():
        if family.name == "creditrelay_webhook_events":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcome = sample.labels["outcome"]
                    counts[outcome] = counts.get(outcome, 0.0) + sample.value
    return counts


def exposition(ledger: CollectorRegistry) -> bytes:
    """The text a scrape gets: this process's (or every worker's) samples, then the database gauges."""
    return generate_latest(_registry()) + generate_latest(ledger)


def ledger_registry(engine: Engine, clock: Callable[[], float] = time.time) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(LedgerCollector(engine, clock))
    return registry
