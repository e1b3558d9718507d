"""billing/stripe_events.py under concurrency, on every database: a payment and its refund arriving at the
same moment never pass each other (the refund is taken back, whichever commits first), and the same
session reported by several events at once is paid once."""

from typing import Any

from sqlalchemy import Connection

from creditrelay.billing.orders import create_order, set_session
from creditrelay.billing.stripe_events import Handled, handle_event
from creditrelay.schema.packages import parse_packages
from creditrelay.schema.stripe_wire import StripeEvent
from tests.support.database import Database
from tests.support.fake_stripe import charge, event, session
from tests.support.ledger import NOW, assert_ledger_consistent, concurrently, in_transaction, make_user

PACKAGES = parse_packages("starter=1000:10.00:USD")
ROUNDS = 8


def as_event(payload: dict[str, Any]) -> StripeEvent:
    return StripeEvent(payload["id"], payload["type"], payload["data"]["object"])


def handle(connection: Connection, payload: dict[str, Any]) -> Handled:
    return handle_event(connection, as_event(payload), PACKAGES, NOW)


def paid_session(database: Database, user: int) -> dict[str, Any]:
    """A Buy's order and its session, paid: the completed event."""
    order = in_transaction(database, lambda c: create_order(c, user, PACKAGES[0], "stripe", NOW))
    found = session(1000, "usd", user=user, package="starter", out_trade_no=order.out_trade_no)
    in_transaction(database, lambda c: set_session(c, order.id, found["id"], NOW))
    return event("checkout.session.completed", found)


def test_a_payment_and_its_refund_at_the_same_moment_end_refunded(database: Database) -> None:
    """Round after round, completed and charge.refunded together: the credits always come and go."""
    alice = make_user(database, "alice@example.com", 0)
    for _ in range(ROUNDS):
        completed = paid_session(database, alice)
        pi = completed["data"]["object"]["payment_intent"]
        refunded = event("charge.refunded", charge(1000, "usd", pi, 1000))
        concurrently(database, [completed, refunded], handle)
        assert database.scalar("SELECT balance FROM users") == 0
    assert database.count("orders", "status = 'refunded'") == ROUNDS
    assert database.count("stripe_events", "status = 'pending'") == 0
    assert_ledger_consistent(database)


def test_one_session_reported_by_four_events_at_once_pays_once(database: Database) -> None:
    """completed twice, async_payment_succeeded and a redelivery, all at once: 1000 credits."""
    alice = make_user(database, "alice@example.com", 0)
    completed = paid_session(database, alice)
    succeeded = event("checkout.session.async_payment_succeeded", completed["data"]["object"])
    again = event("checkout.session.completed", completed["data"]["object"])
    outcomes = concurrently(database, [completed, succeeded, again, completed], handle)
    assert {o.status for o in outcomes} == {"processed"}
    assert database.scalar("SELECT balance FROM users") == 1000
    assert database.count("stripe_events") == 3
    assert_ledger_consistent(database)
