"""The tables of grants and holds (billing.grants, billing.holds): shares of a balance that expire or are
spent first, and credits set aside before a request. Registered in the same metadata as schema.tables,
which imports them."""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, Id, Timestamp
from creditrelay.schema.table_base import column, metadata


class CreditGrant(SQLModel, table=True):
    """A top-up with an expiry, a priority or of kind promo: a share of the balance, spent first, ``live``
    until spent, expired or voided; its remainder then leaves as an ``expiry`` transaction (billing.grants)."""

    __tablename__ = "credit_grants"
    __table_args__ = (sa.Index(None, "userId", "state"), sa.Index(None, "state", "expiresAt"), MYSQL_TABLE_OPTIONS)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    user_id: int = column("userId", foreign_key="users.id", sa_type=Id)
    reference: str = Field(max_length=191, unique=True)  # the top-up's credit_transactions reference
    kind: str = Field(max_length=8)  # paid | promo
    priority: int | None = Field(default=None)  # a lower number is spent first; none: after all that have one
    expires_at: datetime | None = column("expiresAt", default=None, sa_type=Timestamp)
    amount: int = Field(sa_type=sa.BigInteger)  # what the top-up gave
    remaining: int = Field(sa_type=sa.BigInteger)
    used: int = Field(default=0, sa_type=sa.BigInteger)  # spent by usage, deductions and corrections
    state: str = Field(max_length=16)  # live | spent | expired | voided
    reason: str | None = Field(default=None, max_length=255)  # why it was voided
    created_at: datetime = column("createdAt", sa_type=Timestamp)
    closed_at: datetime | None = column("closedAt", default=None, sa_type=Timestamp)


class CreditHold(SQLModel, table=True):
    """Credits set aside before a request, ``open`` until settled, captured, voided or expired (billing.holds)."""

    __tablename__ = "credit_holds"
    __table_args__ = (sa.UniqueConstraint("source", "requestId"), sa.Index(None, "userId", "state", "expiresAt"),
                      sa.Index(None, "state", "expiresAt"), MYSQL_TABLE_OPTIONS)  # fmt: skip

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    user_id: int = column("userId", foreign_key="users.id", sa_type=Id)
    remote_key_id: str | None = column("remoteKeyId", default=None, max_length=64)
    source: str = Field(max_length=64)  # gateway | credit_api:<client source>
    request_id: str | None = column("requestId", default=None, max_length=128)
    amount: int = Field(sa_type=sa.BigInteger)
    settled: int | None = Field(default=None, sa_type=sa.BigInteger)  # what the usage or capture charged
    settled_by: str | None = column("settledBy", default=None, max_length=191)  # that transaction's reference
    state: str = Field(max_length=16)  # open | settled | captured | voided | expired
    expires_at: datetime = column("expiresAt", sa_type=Timestamp)
    created_at: datetime = column("createdAt", sa_type=Timestamp)
    closed_at: datetime | None = column("closedAt", default=None, sa_type=Timestamp)


credit_grants = metadata.tables["credit_grants"]
credit_holds = metadata.tables["credit_holds"]
