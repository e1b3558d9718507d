"""billing/reconcile.py: clean on a consistent ledger, flags tampering and missing usage, --fix repairs."""

import hashlib

import pytest

from creditrelay.billing import reconcile
from creditrelay.billing.accounts import link_key
from creditrelay.billing.deliveries import record_deliveries
from creditrelay.billing.gateways.newapi import NewApiClient
from creditrelay.billing.polling import PollConfig, Poller
from creditrelay.billing.reconcile import Reconciler
from creditrelay.cli.cron import render_table
from creditrelay.schema.database import utc
from creditrelay.schema.tables import webhook_logs
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi
from tests.support.ledger import in_transaction
from tests.support.receiver import add_user
from tests.support.signing import encode, usage_event

T = 1_800_000_000
WINDOW = (T - 3600, T)


def reconciler(database: Database, api: FakeNewApi) -> Reconciler:
    poller = Poller(database.engine, NewApiClient(api.url, ADMIN_TOKEN, ADMIN_USER), PollConfig(), clock=lambda: T)
    return Reconciler(database.engine, poller, PollConfig())


def charge_by_webhook(database: Database, event_id: str, cost: int, request_id: str, key: int = 5) -> None:
    event = parse_event(
        encode(usage_event(event_id, cost=cost, key=key, request_id=request_id) | {"timestamp": T - 60})
    )
    in_transaction(database, lambda c: record_deliveries(c, [event], utc(T)))


def test_consistent_ledger_and_upstream_reconcile_clean(database: Database, api: FakeNewApi) -> None:
    """Everything upstream charged once, balances adding up: OK, and the run is stored."""
    add_user(database.engine, credits=500, key="5")
    api.add(T - 60, token_id=5, quota=40, request_id="r1")
    charge_by_webhook(database, "evt-1", 40, "r1")
    report = reconciler(database, api).run(*WINDOW, fix=False, now=utc(T))
    assert report.ok, render_table(report)
    assert [(t.token, t.upstream_rows, t.upstream_credits, t.local_rows, t.local_credits) for t in report.tokens] == [
        ("5", 1, 40, 1, 40)
    ]
    assert database.rows("SELECT discrepancies, fixed FROM reconcile_runs") == [(0, False)]


def test_a_tampered_balance_is_flagged_by_email_and_not_fixed(database: Database, api: FakeNewApi) -> None:
    """A balance edited by hand no longer adds up: reported with the user's email; --fix leaves it alone."""
    add_user(database.engine, credits=500, key="5")
    with database.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE users SET balance = balance + 1000")
    report = reconciler(database, api).run(*WINDOW, fix=True, now=utc(T))
    assert [(f.kind, f.user) for f in report.findings] == [("balance", "alice@example.com")]
    assert "sum of transactions 500" in report.findings[0].detail
    assert database.scalar("SELECT balance FROM users") == 1500


def test_missing_usage_is_listed_and_fix_charges_it(database: Database, api: FakeNewApi) -> None:
    """An upstream usage that never arrived is named; --fix charges it once and the next run is clean."""
    add_user(database.engine, credits=500, key="5")
    api.add(T - 60, token_id=5, quota=40, request_id="r1")
    api.add(T - 50, token_id=5, quota=15, request_id="lost")
    charge_by_webhook(database, "evt-1", 40, "r1")
    found = reconciler(database, api).run(*WINDOW, fix=False, now=utc(T))
    assert [(f.kind, f.subject, f.user) for f in found.findings] == [("missing", "req:lost", "alice@example.com")]
    table = render_table(found)
    assert "req:lost" in table
    assert "1 discrepancies" in table

    fixed = reconciler(database, api).run(*WINDOW, fix=True, now=utc(T))
    assert fixed.ok
    assert fixed.fixed == {"missing upstream usages charged": 1}
    assert database.scalar("SELECT balance FROM users") == 500 - 55
    assert reconciler(database, api).run(*WINDOW, fix=True, now=utc(T)).fixed == {}


def test_extra_local_usage_is_flagged(database: Database, api: FakeNewApi) -> None:
    """A usage charged here under a request id new-api does not have is reported as extra."""
    add_user(database.engine, credits=500, key="5")
    charge_by_webhook(database, "evt-9", 9, "ghost")
    report = reconciler(database, api).run(*WINDOW, fix=False, now=utc(T))
    assert [(f.kind, f.subject) for f in report.findings] == [("extra", "req:ghost")]


def test_failed_webhooks_are_listed_and_fix_replays_them_once_linked(database: Database, api: FakeNewApi) -> None:
    """A failed delivery is a discrepancy; after `key link`, --fix runs it through billing."""
    event = parse_event(encode(usage_event("evt-stuck", cost=12, key="k-new")))
    in_transaction(database, lambda c: record_deliveries(c, [event], utc(T)))
    report = Reconciler(database.engine, None, PollConfig()).run(*WINDOW, fix=True, now=utc(T))
    assert [(f.kind, f.subject) for f in report.findings] == [("failed_webhook", "evt-stuck")]
    assert not report.upstream_checked
    add_user(database.engine, "erin@example.com", credits=100, key="k-new")
    repaired = Reconciler(database.engine, None, PollConfig()).run(*WINDOW, fix=True, now=utc(T))
    assert repaired.ok
    assert repaired.fixed == {"failed webhooks now charged": 1}
    assert database.scalar("SELECT balance FROM users WHERE email = 'erin@example.com'") == 88


def add_failed_deliveries(database: Database, count: int, key: str = "k-late") -> None:
    """``count`` deliveries stored as failed (their key was not linked), written straight to the table."""
    rows = []
    for i in range(count):
        body = encode(usage_event(f"f-{i:06}", cost=1, key=key))
        rows.append(
            {
                "eventId": f"f-{i:06}",
                "eventType": "usage",
                "payload": body.decode(),
                "payloadHash": hashlib.sha256(body).hexdigest(),
                "status": "failed",
                "errorMsg": "unknown remoteKeyId",
                "createdAt": utc(T - 1 + i // 100 / 1000),  # a hundred per group-commit batch
            }
        )
    with database.engine.begin() as connection:
        connection.execute(webhook_logs.insert(), rows)


def test_fix_works_through_a_backlog_in_chunks_with_progress(
    database: Database, api: FakeNewApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failed deliveries are re-run a chunk per transaction (told to a progress callback), all charged once
    their key is linked; the report names the first LISTED and counts the rest."""
    monkeypatch.setattr(reconcile, "CHUNK", 50)
    monkeypatch.setattr(reconcile, "LISTED", 20)
    user_id = add_user(database.engine, credits=500, key="5")
    add_failed_deliveries(database, 120)
    report = reconciler(database, api).run(*WINDOW, fix=False, now=utc(T))
    assert (len(report.findings), report.unlisted, report.discrepancies) == (20, {"failed_webhook": 100}, 120)
    assert "and 100 more not listed one by one" in render_table(report)
    in_transaction(database, lambda c: link_key(c, "k-late", user_id, utc(T)))
    told: list[tuple[str, int]] = []
    fixer = reconciler(database, api)
    fixer.progress = lambda what, count: told.append((what, count))
    fixed = fixer.run(*WINDOW, fix=True, now=utc(T))
    assert fixed.ok, render_table(fixed)
    assert told == [("failed deliveries", 50), ("failed deliveries", 50), ("failed deliveries", 20)]
    assert fixed.fixed == {"failed webhooks now charged": 120}
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=user_id) == 500 - 120


@pytest.mark.slow
def test_fix_works_through_a_backlog_past_sqlite_variable_limits(database: Database, api: FakeNewApi) -> None:
    """140,000 failed deliveries (one IN list of them went past SQLite's 250,000 variables once padded, and
    --fix stopped having fixed nothing): every one is re-run, and the report counts what is still failed."""
    if database.kind != "sqlite":
        pytest.skip("SQLite's limit; the chunking itself is tested on MariaDB and PostgreSQL")
    add_user(database.engine, credits=0, key="5")
    add_failed_deliveries(database, 140_000)
    report = reconciler(database, api).run(*WINDOW, fix=True, now=utc(T))
    assert report.discrepancies == 140_000  # still unlinked: re-run, and still failed
    assert database.count("webhook_logs", "status = 'failed' AND processedAt IS NOT NULL") == 140_000


def test_a_row_that_cannot_be_charged_as_it_is_is_reported_unbillable(database: Database, api: FakeNewApi) -> None:
    """A log row whose model name is longer than a usage keeps is neither charged nor counted missing: it is
    reported as unbillable with the reason, and --fix leaves it alone."""
    add_user(database.engine, credits=500, key="5")
    api.add(T - 60, token_id=5, quota=9, request_id="long-model", model="m" * 129)
    report = reconciler(database, api).run(*WINDOW, fix=True, now=utc(T))
    assert [(f.kind, f.subject) for f in report.findings] == [("unbillable", "req:long-model")]
    assert "model_name is 129 characters" in report.findings[0].detail
    assert database.scalar("SELECT balance FROM users") == 500
