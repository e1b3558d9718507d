"""The orders table (billing.orders): one row per payment a member starts or a provider reports, from
``created`` to ``paid`` and on to ``refunded`` or ``disputed``, or ``failed`` with the reason. Registered in
the same metadata as schema.tables, which imports it.

Exactly-once is a fact of its unique keys: ``reference`` (``{provider}:{out_trade_no}``) names an order
once per provider, ``sessionId`` a Stripe Checkout Session once, ``paymentIntentId`` the payment a refund or
dispute names, and ``firstOfUser`` — set on a member's first paid order only — makes the first-purchase
bonus a once-per-member fact rather than a check.
"""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, Id, Timestamp
from creditrelay.schema.table_base import column, metadata

# an order's status: created, then paid (then refunded or disputed) or failed
STATUSES = ("created", "paid", "failed", "refunded", "disputed")


class Order(SQLModel, table=True):
    """A purchase of a credit package through a payment provider."""

    __tablename__ = "orders"
    __table_args__ = (sa.Index(None, "userId", "id"), sa.Index(None, "status", "id"), MYSQL_TABLE_OPTIONS)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    provider: str = Field(max_length=16)  # stripe | epay
    reference: str = Field(max_length=191, unique=True)  # {provider}:{out_trade_no}
    out_trade_no: str = column("outTradeNo", max_length=64)  # the order's number at the provider
    session_id: str | None = column("sessionId", default=None, max_length=191, unique=True)  # Stripe cs_…
    payment_intent_id: str | None = column("paymentIntentId", default=None, max_length=191, unique=True)
    provider_trade_no: str | None = column("providerTradeNo", default=None, max_length=191)  # EPay's trade_no
    user_id: int | None = column("userId", default=None, foreign_key="users.id", sa_type=Id)
    member: str | None = Field(default=None, max_length=191)  # how the payment named the member
    package: str = Field(max_length=32)
    # the package's terms when the order was made (null while its package is unknown)
    credits: int | None = Field(default=None, sa_type=sa.BigInteger)
    bonus: int = Field(default=0, sa_type=sa.BigInteger)  # bonus credits of the package
    bonus_first_only: bool = column("bonusFirstOnly", default=False)
    bonus_days: int | None = column("bonusDays", default=None)  # the bonus expires this many days after payment
    amount: int = Field(sa_type=sa.BigInteger)  # the price, in the currency's minor units (cents, fen)
    currency: str = Field(max_length=3)
    status: str = Field(max_length=16)  # created | paid | failed | refunded | disputed
    failure: str | None = Field(default=None, max_length=255)  # why the last payment attempt failed
    bonus_given: int = column("bonusGiven", default=0, sa_type=sa.BigInteger)
    first_of_user: int | None = column("firstOfUser", default=None, unique=True, sa_type=Id)
    refunded: int = Field(default=0, sa_type=sa.BigInteger)  # minor units refunded or disputed so far
    taken_back: int = column("takenBack", default=0, sa_type=sa.BigInteger)  # credits taken back so far
    created_at: datetime = column("createdAt", sa_type=Timestamp)
    paid_at: datetime | None = column("paidAt", default=None, sa_type=Timestamp)
    updated_at: datetime = column("updatedAt", sa_type=Timestamp)


orders = metadata.tables["orders"]
