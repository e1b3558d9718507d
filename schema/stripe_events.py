"""The stripe_events table (billing.stripe_events): every Stripe event ``POST /api/payments/stripe``
accepted, once per Stripe event id (a redelivery updates its row), with what creditrelay did with it:
``processed``, ``ignored`` (a type or state that pays nothing), ``failed`` (recorded on the order too) or
``pending`` — a refund or dispute of a payment whose own event has not arrived yet, taken back as soon as
it does (``paymentIntentId`` and ``amount`` say what to take back). Registered in the same metadata as
schema.tables, which imports it.
"""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, Id, Timestamp
from creditrelay.schema.table_base import column, metadata


class StripeEvent(SQLModel, table=True):
    """A Stripe event received, and what became of it."""

    __tablename__ = "stripe_events"
    __table_args__ = (sa.Index(None, "paymentIntentId", "status"), MYSQL_TABLE_OPTIONS)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    event_id: str = column("eventId", max_length=191, unique=True)  # evt_…
    type: str = Field(max_length=64)  # checkout.session.completed, charge.refunded, …
    object_id: str | None = column("objectId", default=None, max_length=191)  # cs_…, ch_…, dp_…
    payment_intent_id: str | None = column("paymentIntentId", default=None, max_length=191)  # pi_…
    amount: int | None = Field(default=None, sa_type=sa.BigInteger)  # refunded so far / disputed, minor units
    status: str = Field(max_length=16)  # processed | ignored | failed | pending
    detail: str | None = Field(default=None, max_length=255)  # what was done, or why not
    created_at: datetime = column("createdAt", sa_type=Timestamp)
    updated_at: datetime = column("updatedAt", sa_type=Timestamp)


stripe_events = metadata.tables["stripe_events"]
