"""Stripe events applied (docs/payments.md, decision 0035): the Checkout Session paid tops up its order
once, a refund or a dispute takes the credits back once, every event is kept in ``stripe_events``.

Once is a fact of the order: ``billing.payments.apply_payment`` pays an order once under its row lock,
``take_back`` takes each refunded total back once. What this module adds is order between Stripe's
events, which Stripe does not promise:

- a refund or dispute whose payment has not been applied yet (its order is unknown, or not paid) is kept
  ``pending`` with its payment intent and amount, and taken back right after the payment is applied;
- so that the two cannot pass each other unseen (each reading before the other commits), every Stripe
  event's transaction first locks one row, ``leases.stripe-events``: Stripe's events are applied one at
  a time. Payments are a few a minute, not the usage webhook's thousands a second.

The caller owns the transaction and commits whatever it returns, a failure too (it is recorded).
"""

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.orders import CREATED, DISPUTED, FAILED, REFUNDED, Order, UnknownOrder, find_order
from creditrelay.billing.payments import Payment, PaymentStatus, TakeBack, TakeBackStatus, apply_payment, take_back
from creditrelay.schema.inserts import insert_new
from creditrelay.schema.orders import orders
from creditrelay.schema.packages import CreditPackage
from creditrelay.schema.stripe_events import stripe_events
from creditrelay.schema.stripe_wire import (
    CHARGE_REFUNDED,
    DISPUTE_CREATED,
    SESSION_ASYNC_FAILED,
    SESSION_ASYNC_SUCCEEDED,
    SESSION_COMPLETED,
    StripeEvent,
    Takeback,
    checkout_session,
    takeback,
)
from creditrelay.schema.tables import leases

LOCK = "stripe-events"
KINDS = {CHARGE_REFUNDED: REFUNDED, DISPUTE_CREATED: DISPUTED}


class EventStatus(StrEnum):
    PROCESSED = "processed"  # applied, or found applied before
    IGNORED = "ignored"  # nothing to do: another type, a session not paid yet, a charge of no payment intent
    FAILED = "failed"  # the payment could not be applied: recorded on its order, for the operator to fix
    PENDING = "pending"  # a refund or dispute waiting for its payment


@dataclass(frozen=True, slots=True)
class Handled:
    status: EventStatus
    detail: str
    object_id: str | None = None
    payment_intent: str | None = None
    amount: int | None = None
    retry: bool = False  # failed, and Stripe's retry may apply it once the operator has fixed the cause


def handle_event(
    connection: Connection, event: StripeEvent, packages: Iterable[CreditPackage], now: datetime
) -> Handled:
    """Apply ``event`` (see the module) and record it in ``stripe_events``; what became of it."""
    _one_at_a_time(connection)
    row = {"eventId": event.id, "type": event.type, "status": "received", "createdAt": now, "updatedAt": now}
    insert_new(connection, stripe_events, [row], "eventId")
    if event.type in (SESSION_COMPLETED, SESSION_ASYNC_SUCCEEDED):
        handled = _paid(connection, event, tuple(packages), now)
    elif event.type == SESSION_ASYNC_FAILED:
        handled = _payment_failed(connection, event, now)
    elif event.type in KINDS:
        handled = _take_back(connection, event, now)
    else:
        handled = Handled(EventStatus.IGNORED, f"{event.type} is not an event creditrelay acts on")
    values = {
        "type": event.type, "status": handled.status.value, "detail": handled.detail[:255],
        "objectId": handled.object_id, "paymentIntentId": handled.payment_intent, "amount": handled.amount,
        "updatedAt": now,
    }  # fmt: skip
    connection.execute(stripe_events.update().where(stripe_events.c.eventId == event.id).values(**values))
    return handled


def order_number_of(session_id: str) -> str:
    """The order number of a session creditrelay did not start: its id, or where that is longer than an
    order number may be (Stripe's are 66 characters), ``cs_`` and a digest of it — never the id cut."""
    if len(session_id) <= 64:
        return session_id
    return "cs_" + hashlib.sha256(session_id.encode()).hexdigest()[:61]


def _one_at_a_time(connection: Connection) -> None:
    """Lock the row every Stripe event's transaction locks first (made by the first event ever)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    insert_new(connection, leases, [{"name": LOCK, "holder": "stripe webhook", "expiresAt": epoch}], "name")
    connection.execute(sa.select(leases.c.name).where(leases.c.name == LOCK).with_for_update()).one()


def _paid(connection: Connection, event: StripeEvent, packages: tuple[CreditPackage, ...], now: datetime) -> Handled:
    session = checkout_session(event.object)
    if not session.paid:
        detail = f"payment_status {session.payment_status}: nothing paid yet (async_payment_succeeded pays it)"
        return Handled(EventStatus.IGNORED, detail, session.id, session.payment_intent)
    payment = Payment(
        "stripe", session.out_trade_no or order_number_of(session.id), session.amount_total, session.currency,
        member=session.member, package=session.package, session_id=session.id,
        payment_intent_id=session.payment_intent,
    )  # fmt: skip
    outcome = apply_payment(connection, payment, packages, now)
    order = outcome.order
    if outcome.status is PaymentStatus.FAILED:
        # a session naming no member, package or order of ours was not made for creditrelay (another
        # product of the account, `stripe trigger`): kept as failed, but no fix can make it apply
        ours = any((session.member, session.package, session.out_trade_no)) or order.credits is not None
        reason = outcome.reason or "failed"
        return Handled(EventStatus.FAILED, reason, session.id, session.payment_intent, retry=ours)
    detail = f"order {order.out_trade_no} {'paid' if outcome.status is PaymentStatus.APPLIED else 'was paid before'}"
    taken = _pending_for(connection, order, now)
    return Handled(EventStatus.PROCESSED, detail + taken, session.id, session.payment_intent)


def _pending_for(connection: Connection, order: Order, now: datetime) -> str:
    """Take back the refunds and disputes of the order's payment that arrived before it; what was done."""
    if order.payment_intent_id is None:
        return ""
    waiting = connection.execute(
        sa.select(stripe_events.c.id, stripe_events.c.type, stripe_events.c.amount)
        .where(stripe_events.c.paymentIntentId == order.payment_intent_id, stripe_events.c.status == "pending")
        .order_by(stripe_events.c.id)
        .with_for_update()
    ).all()
    credits = 0
    for row in waiting:
        done = _apply_takeback(connection, order, KINDS[row.type], row.amount, now)
        credits += done.credits
        detail = f"taken back after the payment: {done.credits} credits"
        connection.execute(
            stripe_events.update().where(stripe_events.c.id == row.id)
            .values(status=EventStatus.PROCESSED.value, detail=detail, updatedAt=now)
        )  # fmt: skip
    return f"; {len(waiting)} earlier refund(s)/dispute(s) took back {credits} credits" if waiting else ""


def _payment_failed(connection: Connection, event: StripeEvent, now: datetime) -> Handled:
    session = checkout_session(event.object)
    try:
        order = find_order(connection, session_id=session.id, lock=True)
    except UnknownOrder:
        return Handled(EventStatus.IGNORED, "no order has this session", session.id, session.payment_intent)
    if order.status != CREATED:
        return Handled(EventStatus.IGNORED, f"order {order.out_trade_no} is {order.status}", session.id)
    fail_order(connection, order, "the delayed payment failed (checkout.session.async_payment_failed)", now)
    return Handled(EventStatus.PROCESSED, f"order {order.out_trade_no} failed", session.id, session.payment_intent)


def fail_order(connection: Connection, order: Order, reason: str, now: datetime) -> None:
    """Mark an order not paid yet ``failed`` with ``reason`` (a paid one is left alone)."""
    connection.execute(
        orders.update()
        .where(orders.c.id == order.id, orders.c.status == CREATED)
        .values(status=FAILED, failure=reason[:255], updatedAt=now)
    )


def _take_back(connection: Connection, event: StripeEvent, now: datetime) -> Handled:
    kind = KINDS[event.type]
    back: Takeback = takeback(event.object, "amount_refunded" if kind == REFUNDED else "amount")
    if back.payment_intent is None:
        return Handled(EventStatus.IGNORED, "the charge has no payment intent: not a Checkout payment", back.id)
    found = Handled(EventStatus.PENDING, "waiting for its payment", back.id, back.payment_intent, back.amount)
    try:
        order = find_order(connection, payment_intent_id=back.payment_intent, lock=True)
    except UnknownOrder:
        return found
    done = _apply_takeback(connection, order, kind, back.amount, now)
    if done.status is TakeBackStatus.NOT_PAID:
        return found
    detail = f"order {order.out_trade_no} {kind}: {done.credits} credits taken back"
    if done.status is TakeBackStatus.DUPLICATE:
        detail = f"order {order.out_trade_no}: taken back before"
    return Handled(EventStatus.PROCESSED, detail, back.id, back.payment_intent, back.amount)


def _apply_takeback(connection: Connection, order: Order, kind: str, amount: int | None, now: datetime) -> TakeBack:
    """A refund (``amount``: refunded so far) or a dispute (all of it: Stripe withdraws the disputed sum at
    once, and a dispute of a partly refunded charge disputes the rest) of the order, taken back once."""
    refunded = amount if kind == REFUNDED else None
    what = "Stripe refund" if kind == REFUNDED else "Stripe dispute"
    reason = f"{what} of {order.provider} order {order.out_trade_no} ({order.package})"
    return take_back(connection, order, refunded, kind, reason, now)
