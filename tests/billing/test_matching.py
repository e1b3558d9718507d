"""billing/matching.py: a usage without a request id is charged once across webhook and polling, on every
database — either order, twins and triples counted exactly, nearest first, re-reads and replays no-ops."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Connection

from creditrelay.billing.cleanup import delete_old_logs
from creditrelay.billing.deliveries import DeliveryStatus, record_deliveries
from creditrelay.billing.gateways.newapi import ConsumeLog, NewApiClient
from creditrelay.billing.polling import PollConfig, Poller
from creditrelay.billing.rules import LedgerRules
from creditrelay.schema.database import utc
from creditrelay.schema.wire import Event, parse_event
from tests.support.database import Database
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi, fake_newapi
from tests.support.ledger import assert_ledger_consistent, in_transaction
from tests.support.receiver import add_user
from tests.support.signing import encode

T = 1_800_000_000
OPENING = 100_000


def seed_event(event_id: str, at: int, cost: int, *, key: int = 5, model: str = "gpt-4o", prompt: int = 30,
               completion: int = 20) -> dict[str, object]:  # fmt: skip
    """Seed 004's webhook payload, as its patched new-api sends it: no request id."""
    data = {"remoteKeyId": key, "model": model, "promptTokens": prompt, "completionTokens": completion,
            "totalTokens": prompt + completion, "creditCost": cost}  # fmt: skip
    return {"eventId": event_id, "eventType": "usage", "timestamp": at, "data": data}


@dataclass
class Setup:
    api: FakeNewApi
    database: Database
    user_id: int

    def webhook(self, event: dict[str, object]) -> DeliveryStatus:
        parsed = parse_event(encode(event))
        [outcome] = in_transaction(self.database, lambda c: record_deliveries(c, [parsed], utc(T)))
        return outcome.status

    def log(self, at: int, quota: int, request_id: str = "", *, prompt: int = 30, completion: int = 20) -> None:
        self.api.add(at, token_id=5, quota=quota, request_id=request_id, prompt_tokens=prompt,
                     completion_tokens=completion)  # fmt: skip

    def poll(self, config: PollConfig | None = None) -> dict[str, int]:
        client = NewApiClient(self.api.url, ADMIN_TOKEN, ADMIN_USER)
        poller = Poller(self.database.engine, client, config or PollConfig(), clock=lambda: T + 60)
        report = poller.run_once(since=T - 3600)
        return {"charged": report.charged, "matched": report.matched, "duplicates": report.duplicates}

    def balance(self) -> int:
        return int(self.database.scalar("SELECT balance FROM users WHERE id = :id", id=self.user_id))

    def open_poll(self) -> int:
        return int(self.database.scalar("SELECT openPollUsages FROM users WHERE id = :id", id=self.user_id))


@pytest.fixture
def setup(database: Database) -> Iterator[Setup]:
    user_id = add_user(database.engine, credits=OPENING, key="5")
    with fake_newapi() as api:
        yield Setup(api, database, user_id)


def test_webhook_then_poll_charges_once_whether_the_row_has_a_request_id_or_not(setup: Setup) -> None:
    """Two usages by webhook (no request id); their log rows, one with a request id and one from before
    request ids, pair with them; a second poll changes nothing."""
    assert setup.webhook(seed_event("e1", T - 100, 40)) is DeliveryStatus.CHARGED
    assert setup.webhook(seed_event("e2", T - 50, 7, model="gpt-4o-mini")) is DeliveryStatus.CHARGED
    setup.log(T - 101, 40, "req-1")
    setup.api.add(T - 50, token_id=5, quota=7, model="gpt-4o-mini", prompt_tokens=30, completion_tokens=20)
    assert setup.poll() == {"charged": 0, "matched": 2, "duplicates": 0}
    assert setup.poll() == {"charged": 0, "matched": 0, "duplicates": 2}
    assert setup.balance() == OPENING - 47
    assert setup.database.count("usage_records") == 2
    assert_ledger_consistent(setup.database)


def test_poll_then_a_late_webhook_is_a_duplicate(setup: Setup) -> None:
    """The webhook was hours late: the usage was charged from the log; the webhook pairs with it, is a
    duplicate, and stays one when replayed after its log row was cleaned up."""
    setup.log(T - 100, 40, "req-1")
    assert setup.poll()["charged"] == 1
    assert setup.open_poll() == 1
    assert setup.webhook(seed_event("late", T - 99, 40)) is DeliveryStatus.DUPLICATE
    assert setup.open_poll() == 0
    assert delete_old_logs(setup.database.engine, utc(T + 86400)) == 1
    assert setup.webhook(seed_event("late", T - 99, 40)) is DeliveryStatus.DUPLICATE
    assert setup.balance() == OPENING - 40
    assert_ledger_consistent(setup.database)


def test_identical_usages_are_counted_exactly_and_paired_nearest_first(setup: Setup) -> None:
    """Two identical usages in one second, both ways: charged twice. Three log rows with one webhook:
    three times. The webhook pairs with the row nearest in time."""
    for event_id in ("twin-a", "twin-b"):
        setup.webhook(seed_event(event_id, T - 300, 5))
    setup.log(T - 300, 5)
    setup.log(T - 300, 5)
    setup.webhook(seed_event("one-of-three", T - 200, 9, prompt=1))
    for at in (T - 205, T - 201, T - 196):
        setup.log(at, 9, prompt=1)
    assert setup.poll() == {"charged": 2, "matched": 3, "duplicates": 0}
    assert setup.balance() == OPENING - 2 * 5 - 3 * 9
    nearest = setup.database.scalar(
        "SELECT m.pairedKey FROM usage_matches m JOIN usage_records r ON r.id = m.usageRecordId "
        "WHERE r.usageKey = 'evt:one-of-three'"
    )
    assert nearest == "req:newapi-log-4"  # the row 1 s before it, not 4 s after or 5 s before
    assert setup.database.count("usage_matches", "pairedKey IS NULL AND source = 'poll'") == 2
    assert_ledger_consistent(setup.database)


def test_times_further_apart_than_the_tolerance_do_not_pair(setup: Setup) -> None:
    """A log row 8 s from its webhook pairs under the default 10 s, not under a 5 s tolerance."""
    setup.database.rule(LedgerRules(match_seconds=5))
    setup.webhook(seed_event("e1", T - 100, 3))
    setup.log(T - 108, 3)
    assert setup.poll()["charged"] == 1
    setup.database.rule(LedgerRules())
    setup.webhook(seed_event("e2", T - 50, 4))
    setup.log(T - 42, 4)
    assert setup.poll()["matched"] == 1
    assert setup.balance() == OPENING - 3 - 3 - 4


def test_a_differently_priced_pair_is_charged_once_at_the_first_price(setup: Setup) -> None:
    """The webhook said 40 credits, the log 45: one usage, charged 40; the pair keeps both prices."""
    setup.webhook(seed_event("e1", T - 100, 40))
    setup.log(T - 100, 45, "req-1")
    assert setup.poll()["matched"] == 1
    assert setup.balance() == OPENING - 40
    assert setup.database.rows("SELECT creditCost, pairedCost FROM usage_matches") == [(40, 45)]


def test_webhooks_with_a_request_id_pair_by_key_only(setup: Setup) -> None:
    """A webhook carrying requestId is matched by that id: no fingerprint row is kept for it."""
    event = seed_event("e1", T - 100, 40)
    event["data"]["requestId"] = "req-1"  # type: ignore[index]
    setup.webhook(event)
    setup.log(T - 100, 40, "req-1")
    assert setup.poll() == {"charged": 0, "matched": 0, "duplicates": 1}
    assert setup.database.count("usage_matches") == 0


def test_a_poll_racing_webhooks_charges_each_usage_once(setup: Setup) -> None:
    """A poll's transaction over 40 log rows and 8 batches of their webhooks, all started together: every
    usage charged once, whichever got the user's lock first."""
    from creditrelay.billing.polling import bill_logs
    from tests.support.ledger import concurrently

    for i in range(40):
        setup.log(T - 400 + i * 5, 10 + i, prompt=i)
    rows = Poller(setup.database.engine, NewApiClient(setup.api.url, ADMIN_TOKEN, ADMIN_USER), PollConfig()).fetch(
        T - 3600, T
    )
    events = [parse_event(encode(seed_event(f"e{i}", T - 400 + i * 5 + 1, 10 + i, prompt=i))) for i in range(40)]
    batches: list[list[ConsumeLog] | list[Event]] = [rows, *(events[k::8] for k in range(8))]

    def work(connection: Connection, batch: list[ConsumeLog] | list[Event]) -> object:
        if batch is rows:
            return bill_logs(connection, rows, PollConfig(), utc(T))
        return record_deliveries(connection, [e for e in batch if isinstance(e, Event)], utc(T))

    concurrently(setup.database, batches, work)
    assert setup.balance() == OPENING - sum(10 + i for i in range(40))
    assert setup.database.count("usage_records") == 40
    assert setup.database.count("usage_matches", "pairedKey IS NULL") == 0
    assert setup.open_poll() == 0
    assert_ledger_consistent(setup.database)


SKEWS = [(d, s) for d in (6, 8) for s in (5, 7, 9)]  # d: the webhook's clock behind the log's; s: twins' spacing


def test_skewed_twins_webhooks_first_are_charged_twice_not_three_times(setup: Setup) -> None:
    """Two identical usages s seconds apart, the webhook's clock d seconds behind the log's (d within the
    tolerance): the webhooks come first, then the poll reads both rows; two charges per pair of twins."""
    for case, (d, s) in enumerate(SKEWS):
        at = T - 1000 + 100 * case
        setup.webhook(seed_event(f"w1-{case}", at - d, 10, prompt=case))
        setup.webhook(seed_event(f"w2-{case}", at + s - d, 10, prompt=case))
        setup.log(at, 10, prompt=case)
        setup.log(at + s, 10, prompt=case)
    assert setup.poll() == {"charged": 0, "matched": 2 * len(SKEWS), "duplicates": 0}
    assert setup.balance() == OPENING - 2 * 10 * len(SKEWS)
    assert setup.database.count("usage_matches", "pairedKey IS NULL") == 0
    assert_ledger_consistent(setup.database)


@pytest.mark.parametrize("newest_first", [True, False])
def test_skewed_twins_polled_first_are_charged_twice_whatever_the_webhooks_order(
    setup: Setup, newest_first: bool
) -> None:
    """The poll charged both twins first; their webhooks arrive late, newest first or oldest first, one
    request each: both are duplicates (before, the first webhook took the row nearest it and the second
    found none within the tolerance)."""
    for case, (_, s) in enumerate(SKEWS):
        at = T - 1000 + 100 * case
        setup.log(at, 10, prompt=case)
        setup.log(at + s, 10, prompt=case)
    assert setup.poll()["charged"] == 2 * len(SKEWS)
    for case, (d, s) in enumerate(SKEWS):
        at = T - 1000 + 100 * case
        webhooks = [
            seed_event(f"w1-{case}", at - d, 10, prompt=case),
            seed_event(f"w2-{case}", at + s - d, 10, prompt=case),
        ]
        for event in webhooks[::-1] if newest_first else webhooks:
            assert setup.webhook(event) is DeliveryStatus.DUPLICATE, (d, s, event["eventId"])
    assert setup.balance() == OPENING - 2 * 10 * len(SKEWS)
    assert setup.open_poll() == 0
    assert setup.database.count("api_keys", "openPollUsages <> 0") == 0
    assert_ledger_consistent(setup.database)


def test_rows_polled_one_pass_at_a_time_move_an_earlier_pairing(setup: Setup) -> None:
    """The log rows of skewed twins come in two passes, the earlier row first: the first row took the
    webhook nearest it, and the second pass moves that pairing so that the second row pairs too."""
    setup.webhook(seed_event("w1", T - 106, 10))
    setup.webhook(seed_event("w2", T - 101, 10))
    setup.log(T - 100, 10)
    config = PollConfig()
    client = NewApiClient(setup.api.url, ADMIN_TOKEN, ADMIN_USER)
    first = Poller(setup.database.engine, client, config, clock=lambda: T - 98).run_once(since=T - 3600)
    assert (first.charged, first.matched) == (0, 1)
    setup.log(T - 95, 10)
    second = Poller(setup.database.engine, client, config, clock=lambda: T + 60).run_once(since=T - 3600)
    assert (second.charged, second.matched) == (0, 1)
    pairs = setup.database.rows(
        "SELECT r.usageKey, m.pairedKey FROM usage_matches m JOIN usage_records r ON r.id = m.usageRecordId"
        " ORDER BY r.usageKey"
    )
    assert pairs == [("evt:w1", "req:newapi-log-1"), ("evt:w2", "req:newapi-log-2")]
    assert setup.balance() == OPENING - 20


def test_a_key_linked_to_another_user_between_its_webhook_and_its_poll_is_charged_once(setup: Setup) -> None:
    """Charged by webhook to alice; the key moves to bob; the poll reads the same usage: it pairs with the
    webhook's charge, which stays alice's, and bob is charged nothing."""
    from creditrelay.billing.accounts import link_key

    bob = add_user(setup.database.engine, "bob@example.com", credits=OPENING, key="6")
    setup.webhook(seed_event("e1", T - 100, 40))
    in_transaction(setup.database, lambda c: link_key(c, "5", bob, utc(T)))
    setup.log(T - 100, 40)
    assert setup.poll() == {"charged": 0, "matched": 1, "duplicates": 0}
    assert setup.balance() == OPENING - 40
    assert setup.database.scalar("SELECT balance FROM users WHERE id = :id", id=bob) == OPENING
    assert_ledger_consistent(setup.database)


def test_a_key_linked_to_another_user_between_its_poll_and_its_webhook_is_charged_once(setup: Setup) -> None:
    """Charged from the log to alice; the key moves to bob, with its open polled usage; the late webhook,
    now bob's, finds it and is a duplicate."""
    from creditrelay.billing.accounts import link_key

    bob = add_user(setup.database.engine, "bob@example.com", credits=OPENING, key="6")
    setup.log(T - 100, 40)
    assert setup.poll()["charged"] == 1
    in_transaction(setup.database, lambda c: link_key(c, "5", bob, utc(T)))
    assert setup.open_poll() == 0
    assert setup.database.scalar("SELECT openPollUsages FROM users WHERE id = :id", id=bob) == 1
    assert setup.webhook(seed_event("late", T - 99, 40)) is DeliveryStatus.DUPLICATE
    assert setup.database.scalar("SELECT openPollUsages FROM users WHERE id = :id", id=bob) == 0
    assert setup.balance() == OPENING - 40
    assert setup.database.scalar("SELECT balance FROM users WHERE id = :id", id=bob) == OPENING
    assert_ledger_consistent(setup.database)


def test_reconcile_sees_skewed_twins_as_one_usage_each_before_and_after_the_poll(setup: Setup) -> None:
    """Skewed twins charged by webhook: before the poll, reconcile finds their rows not yet paired (nothing
    missing, nothing extra); after it, clean — never a webhook called extra whose row its twin took."""
    from creditrelay.billing.reconcile import Reconciler

    setup.webhook(seed_event("w1", T - 106, 10))
    setup.webhook(seed_event("w2", T - 101, 10))
    setup.log(T - 100, 10)
    setup.log(T - 95, 10)
    client = NewApiClient(setup.api.url, ADMIN_TOKEN, ADMIN_USER)
    poller = Poller(setup.database.engine, client, PollConfig(), clock=lambda: T)
    for _ in range(2):
        report = Reconciler(setup.database.engine, poller, PollConfig()).run(T - 3600, T, fix=False, now=utc(T))
        assert report.ok, report.findings
        setup.poll()
    assert setup.balance() == OPENING - 20
