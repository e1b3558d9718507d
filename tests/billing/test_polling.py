"""billing/polling.py against a stand-in new-api: every upstream usage charged once, however it arrives."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from creditrelay.billing.deliveries import record_deliveries
from creditrelay.billing.gateways.newapi import NewApiClient
from creditrelay.billing.polling import PollConfig, Poller, read_watermark
from creditrelay.schema.errors import UpstreamError
from creditrelay.schema.money import MAX_AMOUNT
from creditrelay.schema.shapes import to_json
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi, fake_newapi
from tests.support.ledger import NOW, assert_ledger_consistent, in_transaction
from tests.support.receiver import add_user
from tests.support.signing import encode, usage_event

T = 1_800_000_000  # "now" for the poller


@dataclass
class Setup:
    api: FakeNewApi
    database: Database
    user_id: int
    sleeps: list[float]
    clock: list[float]

    def poller(self, config: PollConfig | None = None) -> Poller:
        client = NewApiClient(self.api.url, ADMIN_TOKEN, ADMIN_USER)
        return Poller(
            self.database.engine,
            client,
            config or PollConfig(),
            clock=lambda: self.clock[0],
            sleep=self.sleeps.append,
        )

    def balance(self) -> int:
        return int(self.database.scalar("SELECT balance FROM users WHERE id = :id", id=self.user_id))


@pytest.fixture
def setup(database: Database) -> Iterator[Setup]:
    user_id = add_user(database.engine, credits=100_000, key="5")
    with fake_newapi() as api:
        yield Setup(api, database, user_id, [], [float(T)])


def test_usage_delivered_by_webhook_then_polled_is_charged_once(setup: Setup) -> None:
    """The webhook's requestId and the log's request_id are one usage key."""
    event = parse_event(encode(usage_event("evt-1", cost=40, key=5, request_id="req-abc")))
    in_transaction(setup.database, lambda c: record_deliveries(c, [event], NOW))
    setup.api.add(T - 60, token_id=5, quota=40, request_id="req-abc")
    report = setup.poller().run_once()
    assert (report.rows, report.charged, report.duplicates) == (1, 0, 1)
    assert setup.balance() == 100_000 - 40
    assert setup.database.count("usage_records") == 1


def test_a_repeated_poll_charges_nothing_more(setup: Setup) -> None:
    """Polling the same window twice is a no-op the second time."""
    for i in range(30):
        setup.api.add(T - 1000 + i, token_id=5, quota=10 + i, request_id=f"r{i}")
    first = setup.poller().run_once()
    second = setup.poller().run_once(since=T - 3600)
    assert (first.charged, second.charged, second.duplicates) == (30, 0, 30)
    assert setup.balance() == 100_000 - sum(10 + i for i in range(30))
    assert_ledger_consistent(setup.database)


def test_rows_appearing_out_of_id_order_inside_the_overlap_are_charged(setup: Setup) -> None:
    """A row committed late (visible after a newer one was polled) is caught by the next pass's overlap."""
    late = setup.api.add(T - 30, token_id=5, quota=7, request_id="late", hidden=True)
    setup.api.add(T - 10, token_id=5, quota=5, request_id="early")
    setup.poller().run_once()
    assert setup.balance() == 100_000 - 5
    setup.api.hidden.discard(late["id"])
    setup.clock[0] = T + 60
    report = setup.poller().run_once()
    assert (report.charged, report.duplicates) == (1, 1)
    assert setup.balance() == 100_000 - 12


def test_pages_are_walked_to_the_end(setup: Setup) -> None:
    """More rows than a page (page_size is capped at 100 upstream) are all billed."""
    for i in range(250):
        setup.api.add(T - 500 + i, token_id=5, quota=1, request_id="" if i % 2 else f"q{i}")
    report = setup.poller().run_once()
    assert (report.rows, report.charged) == (250, 250)
    assert setup.database.count("usage_records", "requestId LIKE 'newapi-log-%'") == 125


def test_an_outage_mid_backfill_resumes_without_loss_or_double_charge(setup: Setup) -> None:
    """new-api fails during a 24-hour backfill: committed slices stay, the watermark stops there, the rest follows."""
    spent = 0
    for hour in range(24):
        for i in range(15):
            setup.api.add(T - 86_000 + hour * 3600 + i * 60, token_id=5, quota=hour + i + 1, request_id=f"h{hour}-{i}")
            spent += hour + i + 1
    setup.api.fail_after = 10
    with pytest.raises(UpstreamError):
        setup.poller(PollConfig(attempts=3)).run_once()
    assert len(setup.sleeps) == 2
    watermark = in_transaction(setup.database, read_watermark)
    assert watermark is not None
    committed = setup.database.count("usage_records")
    assert 0 < committed < 360
    assert setup.balance() == 100_000 - int(setup.database.scalar("SELECT SUM(creditCost) FROM usage_records"))

    setup.api.fail_after = None
    setup.clock[0] = T + 120
    report = setup.poller().run_once()
    assert report.window_start == watermark - 300
    assert setup.database.count("usage_records") == 360
    assert setup.balance() == 100_000 - spent
    assert_ledger_consistent(setup.database)


def test_unlinked_tokens_are_recorded_reported_and_charged_once_linked(setup: Setup) -> None:
    """Usage of an unknown token is kept in unbilled_usage and reported; after `key link` it is charged."""
    setup.api.add(T - 100, token_id=9, quota=25, request_id="orphan")
    setup.api.add(T - 90, token_id=0, quota=3, request_id="no-token")
    report = setup.poller().run_once()
    assert report.unknown_tokens == {"9": 1}  # only tokens that a `key link` would make billable
    assert [(r["token"], r["reason"]) for r in report.refused] == [("0", "no token id on the log row")]
    assert setup.database.rows("SELECT remoteKeyId, chargedAt FROM unbilled_usage ORDER BY remoteKeyId") == [
        ("0", None),
        ("9", None),
    ]
    other = add_user(setup.database.engine, "dora@example.com", credits=100, key="9")
    setup.clock[0] = T + 30
    setup.poller().run_once()
    assert setup.database.scalar("SELECT balance FROM users WHERE id = :id", id=other) == 75
    assert setup.database.count("unbilled_usage", "chargedAt IS NOT NULL") == 1


def test_a_refusal_with_http_200_is_an_upstream_error(setup: Setup) -> None:
    """new-api's `success: false` is retried, then reported; nothing is billed and the watermark stays unset."""
    setup.api.add(T - 100, token_id=5, quota=25)
    setup.api.refuse_with_200 = True
    with pytest.raises(UpstreamError, match="refused"):
        setup.poller(PollConfig(attempts=2)).run_once()
    assert setup.database.count("usage_records") == 0
    assert in_transaction(setup.database, read_watermark) is None


def test_quota_converts_to_credits_rounding_up(setup: Setup) -> None:
    """With 1000 quota per credit, 1500 quota costs 2 credits and 1000 costs 1."""
    setup.api.add(T - 100, token_id=5, quota=1500, request_id="a")
    setup.api.add(T - 99, token_id=5, quota=1000, request_id="b")
    setup.poller(PollConfig(quota_per_credit=1000)).run_once()
    assert setup.balance() == 100_000 - 3


def test_status_reports_quota_per_unit(setup: Setup) -> None:
    """GET /api/status gives new-api's quota per unit (500000 = 1 USD by default)."""
    assert NewApiClient(setup.api.url, ADMIN_TOKEN, ADMIN_USER).quota_per_unit() == 500_000


def test_wrong_credentials_are_an_upstream_error(setup: Setup) -> None:
    """new-api's 401 for a bad admin token stops the pass with a clear error."""
    client = NewApiClient(setup.api.url, "wrong-token", ADMIN_USER)
    poller = Poller(setup.database.engine, client, PollConfig(attempts=1), clock=lambda: T, sleep=lambda _: None)
    with pytest.raises(UpstreamError, match="401"):
        poller.run_once()


def test_rows_that_cannot_be_stored_whole_are_kept_unbilled_with_the_reason(setup: Setup) -> None:
    """A request id or model name longer than a usage keeps, or a quota past the largest charge: not charged
    under a cut-down key (which collided with another usage), but kept in unbilled_usage saying why; the
    rows around them are charged as usual."""
    long_id = "r" * 129
    setup.api.add(T - 50, token_id=5, quota=10, request_id=long_id[:128])  # a real usage whose id is the cut
    setup.api.add(T - 40, token_id=5, quota=20, request_id=long_id)
    setup.api.add(T - 30, token_id=5, quota=30, request_id="model-long", model="m" * 129)
    setup.api.add(T - 20, token_id=5, quota=MAX_AMOUNT + 1, request_id="huge")
    report = setup.poller().run_once()
    assert (report.charged, report.unbilled) == (1, 3)
    assert setup.balance() == 100_000 - 10
    reasons = dict(setup.database.rows("SELECT upstreamId, reason FROM unbilled_usage ORDER BY upstreamId"))
    assert reasons[2] == "request_id is 129 characters, more than the 128 a usage keeps"
    assert reasons[3] == "model_name is 129 characters, more than the 128 a usage keeps"
    assert reasons[4].startswith(f"quota {MAX_AMOUNT + 1} is")
    assert setup.database.count("usage_records") == setup.database.count("credit_transactions", "type = 'usage'")
    assert_ledger_consistent(setup.database)


def test_rows_new_api_would_not_write_are_kept_unbilled_and_never_stop_a_pass(setup: Setup) -> None:
    """Text that is not Unicode (a lone surrogate) or holds a NUL (which PostgreSQL cannot store), a quota
    past 64 bits, a fractional quota: each such row is kept in unbilled_usage saying why — its neighbours
    are charged, and the next pass goes on."""
    setup.api.add(T - 60, token_id=5, quota=7, request_id="fine")["token_name"] = "a user's \x00 name"  # not stored
    odd = (("request_id", "poll\ud800"), ("model_name", "gpt\x00-4o"), ("quota", 2**64), ("quota", 10.9))
    for index, (field, value) in enumerate(odd):
        setup.api.add(T - 50 + index, token_id=5, quota=1, request_id=f"odd-{index}")[field] = value
    report = setup.poller().run_once()
    assert (report.charged, report.unbilled) == (1, 4)
    reasons = [reason for (reason,) in setup.database.rows("SELECT reason FROM unbilled_usage ORDER BY id")]
    assert reasons == [
        "log row not as new-api writes it: request_id is not valid Unicode text",
        "log row not as new-api writes it: model_name holds a NUL character",
        f"log row not as new-api writes it: quota {2**64} is out of range",
        "log row not as new-api writes it: quota is '10.9', not a whole number",
    ]
    assert setup.balance() == 100_000 - 7
    again = setup.poller().run_once()
    assert (again.charged, again.duplicates) == (0, 1)
    assert setup.database.count("unbilled_usage") == 4


def test_a_linked_key_skipped_for_another_reason_is_named_with_it(setup: Setup) -> None:
    """Rows of the linked key 5 kept unbilled — a model name longer than a usage keeps, a negative quota —
    are listed with their real reason, not as an unknown token."""
    setup.api.add(T - 100, token_id=5, quota=10, request_id="long-model", model="m" * 200)
    setup.api.add(T - 90, token_id=5, quota=-4, request_id="refund")
    report = setup.poller().run_once()
    assert report.unknown_tokens == {}
    reasons = sorted(r["reason"] for r in report.refused)
    assert reasons[0].startswith("model_name is 200 characters")
    assert reasons[1].startswith("negative quota -4")
    assert to_json(report)["refused"] == report.refused
