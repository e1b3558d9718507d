"""billing/autolink.py: a mapped gateway user's keys bill their user without `key link`, by webhook and by
poll, on every database, against the fake new-api's wire format (``user_id`` and ``token_id`` on log rows)."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Connection

from creditrelay.billing.accounts import AccountError, link_key, list_keys, set_gateway_user
from creditrelay.billing.deliveries import DeliveryStatus, deliver, record_deliveries
from creditrelay.billing.enforcement import EnforceConfig, Enforcer
from creditrelay.billing.gateways.newapi import NewApiClient
from creditrelay.billing.polling import PollConfig, Poller
from creditrelay.billing.rules import LedgerRules
from creditrelay.schema.wire import Event, parse_event
from tests.support.database import Database
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi, fake_newapi
from tests.support.ledger import NOW, assert_ledger_consistent, concurrently, in_transaction, make_user
from tests.support.signing import encode, usage_event

T = 1_800_000_000  # "now" for the poller
MEMBER = 42  # alice's account at the gateway: she creates her own keys there


@dataclass
class Setup:
    api: FakeNewApi
    database: Database
    alice: int

    def poll(self) -> Poller:
        client = NewApiClient(self.api.url, ADMIN_TOKEN, ADMIN_USER)
        return Poller(self.database.engine, client, PollConfig(), clock=lambda: float(T), sleep=lambda _: None)

    def balance(self, user_id: int | None = None) -> int:
        return int(self.database.scalar("SELECT balance FROM users WHERE id = :u", u=user_id or self.alice))

    def webhook(self, event_id: str, key: int, cost: int, gateway_user: int | str | None = None) -> DeliveryStatus:
        event = usage_event(event_id, cost=cost, key=key)
        event["timestamp"] = T - 60
        if gateway_user is not None:
            event["data"]["userId"] = gateway_user
        [outcome] = deliver(self.database.engine, [parse_event(encode(event))], NOW)
        return outcome.status

    def keys(self) -> list[tuple[str, int, bool]]:
        links = in_transaction(self.database, lambda c: list_keys(c))
        return [(k.remote_key_id, k.user_id, k.automatic) for k in links]


@pytest.fixture
def setup(database: Database) -> Iterator[Setup]:
    database.rule(LedgerRules(admin_gateway_user=ADMIN_USER))
    alice = make_user(database, "alice@example.com", 1000)
    in_transaction(database, lambda c: set_gateway_user(c, alice, str(MEMBER), NOW))
    with fake_newapi() as api:
        yield Setup(api, database, alice)


def test_a_webhook_naming_a_mapped_gateway_user_bills_and_links_the_key(setup: Setup) -> None:
    """No `key link`: data.userId says whose key 77 is, so alice pays, and the key is hers from now on."""
    assert setup.webhook("evt-1", 77, 30, MEMBER) is DeliveryStatus.CHARGED
    assert setup.webhook("evt-2", 77, 20) is DeliveryStatus.CHARGED  # linked now: no userId needed
    assert setup.balance() == 1000 - 50
    assert setup.keys() == [("77", setup.alice, True)]
    assert setup.webhook("evt-3", 78, 5, "someone-else") is DeliveryStatus.UNBILLABLE  # mapped to nobody
    assert_ledger_consistent(setup.database)


def test_a_polled_row_of_a_mapped_gateway_user_bills_without_key_link(setup: Setup) -> None:
    setup.api.add(T - 100, token_id=91, quota=40, request_id="r1", user_id=MEMBER)
    setup.api.add(T - 90, token_id=92, quota=7, request_id="r2", user_id=7)  # a member nobody mapped
    report = setup.poll().run_once()
    assert (report.charged, report.linked, report.unknown_tokens) == (1, ["91"], {"92": 1})
    assert setup.balance() == 1000 - 40
    assert setup.keys() == [("91", setup.alice, True)]


def test_a_seed_004_webhook_for_a_never_seen_key_is_charged_once_after_the_poll_learns_the_key(
    setup: Setup,
) -> None:
    """The patched new-api's webhook says no user: it fails (422) until the poll reads the key's log row,
    which links the key; the row is charged and the failed webhook, run again, pairs with it."""
    assert setup.webhook("evt-seed", 55, 25) is DeliveryStatus.UNBILLABLE
    setup.api.add(T - 60, token_id=55, quota=25, model="gpt-4", prompt_tokens=100, completion_tokens=50,
                  user_id=MEMBER)  # fmt: skip
    report = setup.poll().run_once()
    assert (report.charged, report.linked, report.replayed) == (1, ["55"], 1)
    assert setup.balance() == 1000 - 25
    assert setup.database.scalar("SELECT status FROM webhook_logs WHERE eventId = 'evt-seed'") == "processed"
    assert setup.poll().run_once().charged == 0
    assert setup.webhook("evt-seed", 55, 25) is DeliveryStatus.DUPLICATE
    assert setup.balance() == 1000 - 25
    assert_ledger_consistent(setup.database)


def test_a_webhook_without_user_finds_the_key_polling_learnt(setup: Setup) -> None:
    """A row of an unmapped member teaches whose key 60 is; once that member is mapped, a webhook of key
    60 that says no user bills them."""
    setup.api.add(T - 100, token_id=60, quota=3, request_id="r1", user_id=8)
    assert setup.poll().run_once().unknown_tokens == {"60": 1}
    bob = make_user(setup.database, "bob@example.com", 100)
    in_transaction(setup.database, lambda c: set_gateway_user(c, bob, "8", NOW))
    assert setup.webhook("evt-1", 60, 10) is DeliveryStatus.CHARGED
    assert setup.keys() == [("60", bob, True)]


def test_an_explicit_key_link_wins(setup: Setup) -> None:
    bob = make_user(setup.database, "bob@example.com", 100, "77")
    assert setup.webhook("evt-1", 77, 10, MEMBER) is DeliveryStatus.CHARGED
    assert (setup.balance(), setup.balance(bob)) == (1000, 90)
    assert setup.webhook("evt-2", 78, 10, MEMBER) is DeliveryStatus.CHARGED
    in_transaction(setup.database, lambda c: link_key(c, "78", bob, NOW))  # the operator moves it
    assert setup.keys() == [("77", bob, False), ("78", bob, False)]


def test_the_account_creditrelay_calls_as_cannot_be_mapped(setup: Setup) -> None:
    """In tokens mode NEW_API_USER_ID owns every key: mapping it would bill one user for everybody."""
    bob = make_user(setup.database, "bob@example.com", 100)
    with pytest.raises(AccountError, match="NEW_API_USER_ID"):
        in_transaction(setup.database, lambda c: set_gateway_user(c, bob, ADMIN_USER, NOW))
    assert setup.webhook("evt-1", 5, 10, int(ADMIN_USER)) is DeliveryStatus.UNBILLABLE


def test_one_gateway_user_bills_one_user_and_a_mapping_can_be_cleared(setup: Setup) -> None:
    bob = make_user(setup.database, "bob@example.com", 100)
    with pytest.raises(AccountError, match=r"already bills alice@example\.com"):
        in_transaction(setup.database, lambda c: set_gateway_user(c, bob, f" {MEMBER}", NOW))
    cleared = in_transaction(setup.database, lambda c: set_gateway_user(c, setup.alice, None, NOW))
    assert cleared.gateway_user_id is None
    assert in_transaction(setup.database, lambda c: set_gateway_user(c, bob, "0042", NOW)).gateway_user_id == "42"
    assert setup.webhook("evt-1", 77, 10, "42") is DeliveryStatus.CHARGED
    assert setup.balance(bob) == 90


def test_instances_seeing_a_keys_first_usages_at_once_link_it_once(setup: Setup, insert_path: str) -> None:
    """Constraints, not check-then-insert: four deliveries of the same new key race; each is charged once
    and the key has one link."""
    events = []
    for i in range(4):
        event = usage_event(f"evt-{i}", cost=10, key=300, request_id=f"req-{i}")
        event["data"]["userId"] = MEMBER
        events.append([parse_event(encode(event))])

    def work(connection: Connection, batch: list[Event]) -> str:
        [outcome] = record_deliveries(connection, batch, NOW)
        return outcome.status.value

    assert concurrently(setup.database, events, work) == ["charged"] * 4
    assert setup.keys() == [("300", setup.alice, True)]
    assert setup.balance() == 1000 - 40
    assert_ledger_consistent(setup.database)


def test_a_suspended_users_automatically_linked_key_is_disabled_too(database: Database, api: FakeNewApi) -> None:
    database.rule(LedgerRules(enforce=True, admin_gateway_user=ADMIN_USER))
    api.token(17)
    api.token(18)
    alice = make_user(database, "alice@example.com", 5, "17")
    in_transaction(database, lambda c: set_gateway_user(c, alice, str(MEMBER), NOW))
    spend = usage_event("evt-1", cost=10, key=17)
    deliver(database.engine, [parse_event(encode(spend))], NOW)  # -5: suspended
    first = usage_event("evt-2", cost=1, key=18)
    first["data"]["userId"] = MEMBER  # a key she made later, first seen now
    deliver(database.engine, [parse_event(encode(first))], NOW)
    client = NewApiClient(api.url, ADMIN_TOKEN, ADMIN_USER)
    Enforcer(database.engine, client, EnforceConfig("tokens", int(ADMIN_USER))).run_once()
    assert {token: api.tokens[token]["status"] for token in (17, 18)} == {17: 2, 18: 2}
