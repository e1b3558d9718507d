"""billing/deliveries.py: webhook log claims, conflicts, retries of failed events, late replays."""

import pytest

from billing.accounts import link_key
from billing.deliveries import DeliveryStatus, record_deliveries
from schema.wire import parse_event
from tests.billing.conftest import NOW, in_transaction
from tests.billing.test_ledger import make_user
from tests.support.database import Database
from tests.support.signing import encode, usage_event

pytestmark = pytest.mark.usefixtures("insert_path")  # every test on both insert paths


def test_same_event_twice_in_one_batch_is_charged_once(database: Database) -> None:
    """An event id repeated in a batch: the first charges, the same body is a duplicate, another conflicts."""
    make_user(database, "alice@example.com", 100, "1")
    batch = [
        parse_event(encode(usage_event("e1", cost=10))),
        parse_event(encode(usage_event("e1", cost=10))),
        parse_event(encode(usage_event("e1", cost=11))),
    ]
    outcomes = in_transaction(database, lambda c: record_deliveries(c, batch, NOW))
    assert [o.status for o in outcomes] == [
        DeliveryStatus.CHARGED,
        DeliveryStatus.DUPLICATE,
        DeliveryStatus.CONFLICT,
    ]
    assert database.scalar("SELECT balance FROM users") == 90


def test_replay_after_log_cleanup_is_still_a_duplicate(database: Database) -> None:
    """Usage records outlive webhook logs, so an old event replayed after cleanup charges nothing."""
    make_user(database, "alice@example.com", 100, "1")
    event = parse_event(encode(usage_event("e1", cost=10)))
    in_transaction(database, lambda c: record_deliveries(c, [event], NOW))
    with database.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM webhook_logs")
    [outcome] = in_transaction(database, lambda c: record_deliveries(c, [event], NOW))
    assert outcome.status is DeliveryStatus.DUPLICATE
    assert database.scalar("SELECT balance FROM users") == 90


def test_failed_event_is_retried_when_redelivered(database: Database) -> None:
    """A failed (unknown key) log row is billed on the next delivery once the key is linked."""
    alice = make_user(database, "alice@example.com", 100, "1")
    event = parse_event(encode(usage_event("e1", key="k9", cost=10)))
    [failed] = in_transaction(database, lambda c: record_deliveries(c, [event], NOW))
    assert failed.status is DeliveryStatus.UNBILLABLE
    in_transaction(database, lambda c: link_key(c, "k9", alice, NOW))
    [charged] = in_transaction(database, lambda c: record_deliveries(c, [event], NOW))
    assert charged.status is DeliveryStatus.CHARGED
    assert charged.balance == 90
