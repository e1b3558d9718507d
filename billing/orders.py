"""Orders: one row per purchase of a credit package (docs/payments.md) — made when a member starts a
purchase (``create_order``) or by the first report of a payment creditrelay did not start, found by any of
the provider's ids, listed for the portal, the admin page and ``order list``. Applying a payment and taking
credits back are ``billing.payments``."""

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.errors import InvalidInput, NotFound
from creditrelay.schema.orders import STATUSES, orders
from creditrelay.schema.packages import CreditPackage, format_money

PROVIDERS = ("stripe", "epay")
CREATED, PAID, FAILED, REFUNDED, DISPUTED = STATUSES
DONE = (PAID, REFUNDED, DISPUTED)  # a payment was applied: another report of it is a duplicate


class OrderError(InvalidInput):
    """An order cannot be made as asked; the message says why."""


class UnknownOrder(NotFound):
    """No order matches what the provider named."""


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    provider: str
    out_trade_no: str
    user_id: int | None
    member: str | None
    package: str
    credits: int | None
    bonus: int
    bonus_first_only: bool
    bonus_days: int | None
    amount: int
    currency: str
    status: str
    failure: str | None
    bonus_given: int
    refunded: int
    taken_back: int
    session_id: str | None
    payment_intent_id: str | None
    created_at: datetime
    paid_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> "Order":
        return cls(
            row.id, row.provider, row.outTradeNo, row.userId, row.member, row.package, row.credits, row.bonus,
            bool(row.bonusFirstOnly), row.bonusDays, row.amount, row.currency, row.status, row.failure,
            row.bonusGiven, row.refunded, row.takenBack, row.sessionId, row.paymentIntentId, row.createdAt, row.paidAt,
        )  # fmt: skip

    @property
    def price(self) -> str:
        return format_money(self.amount, self.currency)


def package_terms(package: CreditPackage) -> dict[str, Any]:
    return {
        "credits": package.credits, "bonus": package.bonus, "bonusFirstOnly": package.bonus_first_only,
        "bonusDays": package.bonus_days, "amount": package.amount, "currency": package.currency,
    }  # fmt: skip


def new_trade_no(now: datetime) -> str:
    """An order number: the time, then 12 random hex digits (26 characters, letters and digits only, which
    every EPay gateway takes)."""
    return now.strftime("%Y%m%d%H%M%S") + secrets.token_hex(6)


def create_order(connection: Connection, user_id: int, package: CreditPackage, provider: str, now: datetime) -> Order:
    """A new order of ``package`` for the member, at the package's price now; paid later by the provider."""
    if provider not in PROVIDERS:
        raise OrderError(f"provider must be one of {', '.join(PROVIDERS)}")
    out_trade_no = new_trade_no(now)
    row = {
        "provider": provider, "reference": f"{provider}:{out_trade_no}", "outTradeNo": out_trade_no,
        "userId": user_id, "member": str(user_id), "package": package.name, **package_terms(package), "status": CREATED,
        "bonusGiven": 0, "refunded": 0, "takenBack": 0, "createdAt": now, "updatedAt": now,
    }  # fmt: skip
    connection.execute(orders.insert().values(**row))
    return find_order(connection, reference=row["reference"])


def set_session(connection: Connection, order_id: int, session_id: str, now: datetime) -> None:
    """Record the Stripe Checkout Session made for an order, so the session's events find it."""
    connection.execute(orders.update().where(orders.c.id == order_id).values(sessionId=session_id, updatedAt=now))


def find_order(
    connection: Connection,
    *,
    order_id: int | None = None,
    reference: str | None = None,
    session_id: str | None = None,
    payment_intent_id: str | None = None,
    lock: bool = False,
) -> Order:
    """The order with that id, ``{provider}:{out_trade_no}``, Stripe session or payment intent (the first
    given); ``UnknownOrder`` if none. With ``lock``, its row is locked for the transaction."""
    given = [
        (column, value)
        for column, value in ((orders.c.id, order_id), (orders.c.reference, reference),
                              (orders.c.sessionId, session_id), (orders.c.paymentIntentId, payment_intent_id))
        if value is not None
    ]  # fmt: skip
    if not given:
        raise UnknownOrder("no order named")
    column, value = given[0]
    query = sa.select(orders).where(column == value)
    row = connection.execute(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise UnknownOrder(f"no order {value}")
    return Order.of(row)


def list_orders(
    connection: Connection, *, user_id: int | None = None, status: str | None = None, limit: int = 50
) -> list[Order]:
    """Orders newest first, a member's or everybody's, of one status or any."""
    query = sa.select(orders).order_by(orders.c.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(orders.c.userId == user_id)
    if status is not None:
        query = query.where(orders.c.status == status)
    return [Order.of(row) for row in connection.execute(query)]
