"""Payments applied to orders exactly once, and credits taken back once (docs/payments.md).

``apply_payment`` takes a provider's report that an order was paid. Under the order's row lock it checks
the member, the package and the amount paid, and either marks the order ``failed`` with the reason — the
caller commits that, so the operator sees it and a provider's retry after the fix applies it — or, in the
caller's one transaction, tops the member up (``accounts.top_up``, reference ``order:<id>``: the ledger's
unique reference backs the order's status), gives the package's bonus as a promo grant
(``order:<id>:bonus``) and marks the order ``paid``. A report of an order already paid changes nothing.

A first-purchase bonus goes with the member's first paid order only: every paid order claims the unique
``orders.firstOfUser`` for its member, and only the one claim the database accepts carries the bonus.

``take_back`` takes a refund's or a dispute's share of an order's credits back as a correction
(``accounts.adjust``: it may overdraw and suspend, like any correction), once per refunded total.

Locks: the order row, then the user (inside ``top_up``/``adjust``), then new rows — the ledger's order.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from creditrelay.billing.accounts import AccountError, adjust, find_user, top_up
from creditrelay.billing.grants import GrantTerms
from creditrelay.billing.orders import (
    CREATED,
    DISPUTED,
    DONE,
    FAILED,
    PAID,
    PROVIDERS,
    REFUNDED,
    Order,
    OrderError,
    find_order,
    package_terms,
)
from creditrelay.schema.inserts import insert_new
from creditrelay.schema.money import MAX_BALANCE
from creditrelay.schema.orders import orders
from creditrelay.schema.packages import CreditPackage, format_money
from creditrelay.schema.statements import savepoint


class PaymentStatus(StrEnum):
    APPLIED = "applied"  # the credits (and bonus) arrived now
    DUPLICATE = "duplicate"  # the order was paid before: nothing changed
    FAILED = "failed"  # recorded on the order as failed, with the reason


@dataclass(frozen=True, slots=True)
class Payment:
    """A provider's report that an order was paid, in creditrelay's terms."""

    provider: str  # stripe | epay
    out_trade_no: str  # the order's number (EPay's out_trade_no; for Stripe the order's, else the session id)
    amount: int  # what was paid, in minor units
    currency: str
    member: str | None = None  # the member as the payment names them (a user id or an email), if it does
    package: str | None = None  # the package as the payment names it, if it does
    session_id: str | None = None  # Stripe Checkout Session
    payment_intent_id: str | None = None  # Stripe payment intent: what refunds and disputes name
    provider_trade_no: str | None = None  # EPay's own trade number


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    status: PaymentStatus
    order: Order
    reason: str | None = None  # why it failed


def apply_payment(
    connection: Connection, payment: Payment, packages: Iterable[CreditPackage], now: datetime
) -> PaymentOutcome:
    """Apply a paid order once; see the module. Returns what happened; a failure is recorded on the order
    (commit it)."""
    if payment.provider not in PROVIDERS:
        raise OrderError(f"provider must be one of {', '.join(PROVIDERS)}")
    if not 0 < len(payment.out_trade_no) <= 64:
        raise OrderError("an order number is 1 to 64 characters")
    if not 0 <= payment.amount <= MAX_BALANCE:
        raise OrderError(f"an amount paid is 0 to {MAX_BALANCE} minor units")
    known = {package.name: package for package in packages}
    order_id = _order_of(connection, payment, known, now)
    order = find_order(connection, order_id=order_id, lock=True)
    other = _not_the_order(connection, order, payment)
    if order.status in DONE:  # a payment that is not this order's changes nothing of it, and says so
        return PaymentOutcome(PaymentStatus.DUPLICATE if other is None else PaymentStatus.FAILED, order, other)
    ids = {"paymentIntentId": payment.payment_intent_id, "providerTradeNo": payment.provider_trade_no}
    values: dict[str, Any] = {name: value for name, value in ids.items() if value is not None} | {"updatedAt": now}
    package = known.get(order.package) if order.credits is None else None
    if package is not None:  # a package unknown when the order was made, defined since
        values |= package_terms(package)
    user_id = order.user_id if order.user_id is not None else _member(connection, payment.member)
    values["userId"] = user_id
    amount, currency = values.get("amount", order.amount), values.get("currency", order.currency)
    reason = other or _unpayable(order, payment, package, user_id, (amount, currency))
    if reason is None and user_id is not None:
        try:
            with savepoint(connection, "apply_payment"):
                values |= _pay(connection, order, user_id, values, now)
        except AccountError as error:  # the balance would pass its bound: kept for the operator
            reason = str(error)
    if reason is not None:
        values |= {"status": FAILED, "failure": reason[:255]}
    connection.execute(orders.update().where(orders.c.id == order_id).values(**values))
    status = PaymentStatus.FAILED if reason is not None else PaymentStatus.APPLIED
    return PaymentOutcome(status, find_order(connection, order_id=order_id), reason)


def _unpayable(
    order: Order, payment: Payment, package: CreditPackage | None, user_id: int | None, price: tuple[int, str]
) -> str | None:
    """Why a payment of ``order`` cannot be applied (no package, no member, another price), or None."""
    if order.credits is None and package is None:
        named = order.package or payment.package
        return f"unknown package {named!r}" if named else "the payment names no package"
    if user_id is None:
        return "the payment names no member" if payment.member is None else f"unknown member {payment.member!r}"
    return _other_price(payment, *price)


def _other_price(payment: Payment, amount: int, currency: str) -> str | None:
    """What differs when ``payment`` is not ``amount`` minor units of ``currency``, or None."""
    paid = payment.currency.upper()
    if (payment.amount, paid) == (amount, currency):
        return None
    return f"paid {format_money(payment.amount, paid)} {paid}, the order is {format_money(amount, currency)} {currency}"


def _order_of(connection: Connection, payment: Payment, known: dict[str, CreditPackage], now: datetime) -> int:
    """The order the payment pays: by its Stripe session, else by its number — made from the payment when
    there is none yet (a payment creditrelay did not start), at the price of the package it names."""
    if payment.session_id is not None:
        found = connection.execute(sa.select(orders.c.id).where(orders.c.sessionId == payment.session_id)).scalar()
        if found is not None:
            return int(found)
    reference = f"{payment.provider}:{payment.out_trade_no}"
    name = payment.package or ""
    package = known.get(name)
    name = name if len(name) <= 32 else ""  # no package has a longer name: unknown, and said whole in its failure
    paid = {"amount": payment.amount, "currency": payment.currency.upper()[:3]}
    terms = package_terms(package) if package is not None else paid
    row = {
        "provider": payment.provider, "reference": reference, "outTradeNo": payment.out_trade_no,
        "sessionId": payment.session_id, "userId": None, "member": (payment.member or None) and payment.member[:191],
        "package": name, "credits": None, "bonus": 0, "bonusFirstOnly": False, "bonusDays": None, **terms,
        "status": CREATED, "bonusGiven": 0, "refunded": 0, "takenBack": 0, "createdAt": now, "updatedAt": now,
    }  # fmt: skip
    insert_new(connection, orders, [row], "reference")
    return int(connection.execute(sa.select(orders.c.id).where(orders.c.reference == reference)).scalar_one())


def _not_the_order(connection: Connection, order: Order, payment: Payment) -> str | None:
    """Why ``payment`` is not a payment of ``order`` as it was made: another amount or currency, and for a
    Stripe session (whose member and package creditrelay set) another member or package; None when it is."""
    if order.credits is not None and (other := _other_price(payment, order.amount, order.currency)) is not None:
        return other
    if payment.provider != "stripe":  # EPay names no member, and a gateway may re-encode the name it echoes
        return None
    if payment.package is not None and order.package and payment.package != order.package:
        return f"the payment names package {payment.package[:40]!r}, the order is for {order.package!r}"
    if payment.member is None or order.user_id is None or _member(connection, payment.member) == order.user_id:
        return None
    return f"the payment names member {payment.member[:40]!r}, the order is user {order.user_id}'s"


def _member(connection: Connection, member: str | None) -> int | None:
    if member is None or not member.strip() or len(member) > 191:
        return None
    try:
        return find_user(connection, member).id
    except AccountError:
        return None


def _pay(connection: Connection, order: Order, user_id: int, values: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The top-up, the bonus and the first-purchase claim of a payment found right; the order's new values."""
    credits = int(values.get("credits", order.credits or 0))
    bonus = int(values.get("bonus", order.bonus))
    first_only = bool(values.get("bonusFirstOnly", order.bonus_first_only))
    days = values.get("bonusDays", order.bonus_days)
    label = f"{order.provider} order {order.out_trade_no} ({order.package})"
    top_up(connection, user_id, credits, f"order:{order.id}", now, reason=label)
    first = _claim_first(connection, order.id, user_id)
    given = bonus if bonus and (first or not first_only) else 0
    if given:
        expires = now + timedelta(days=days) if days else None
        terms = GrantTerms(kind="promo", expires_at=expires)
        what = "first-purchase bonus" if first_only else "bonus"
        top_up(connection, user_id, given, f"order:{order.id}:bonus", now, reason=f"{what}: {label}", terms=terms)
    return {"status": PAID, "failure": None, "paidAt": now, "bonusGiven": given}


def _claim_first(connection: Connection, order_id: int, user_id: int) -> bool:
    """Whether this is the member's first paid order: the unique ``firstOfUser`` takes one claim a member."""
    try:
        with savepoint(connection, "first_purchase"):
            connection.execute(orders.update().where(orders.c.id == order_id).values(firstOfUser=user_id))
    except IntegrityError:
        return False
    return True


class TakeBackStatus(StrEnum):
    TAKEN = "taken"  # credits taken back now
    DUPLICATE = "duplicate"  # this refunded total was taken back before
    NOT_PAID = "not_paid"  # the order was never paid: nothing to take


@dataclass(frozen=True, slots=True)
class TakeBack:
    status: TakeBackStatus
    order: Order
    credits: int = 0  # taken now


def take_back(
    connection: Connection, order: Order, refunded: int | None, status: str, reason: str, now: datetime
) -> TakeBack:
    """Take back the share of the order's credits (and bonus) that ``refunded`` — the total refunded or
    disputed so far, in minor units; ``None``: all of it — stands for, less what was taken before; mark the
    order ``status`` (refunded or disputed). Once per total, under the order's row lock."""
    if status not in (REFUNDED, DISPUTED):
        raise OrderError("status must be refunded or disputed")
    locked = find_order(connection, order_id=order.id, lock=True)
    if locked.status not in DONE or locked.user_id is None:
        return TakeBack(TakeBackStatus.NOT_PAID, locked)
    total = locked.amount if refunded is None else max(0, min(refunded, locked.amount))
    if total <= locked.refunded:
        return TakeBack(TakeBackStatus.DUPLICATE, locked)
    given = (locked.credits or 0) + locked.bonus_given
    target = given if total >= locked.amount else given * total // locked.amount
    take = target - locked.taken_back
    if take > 0:
        adjust(connection, locked.user_id, -take, f"order:{locked.id}:back:{total}", reason[:255], now)
    connection.execute(
        orders.update()
        .where(orders.c.id == locked.id)
        .values(status=status, refunded=total, takenBack=max(target, locked.taken_back), updatedAt=now)
    )
    return TakeBack(TakeBackStatus.TAKEN, find_order(connection, order_id=locked.id), max(take, 0))
