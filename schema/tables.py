"""The tables (docs/design.md), with the SQL-visible camelCase names of the billing schema they grew from.

Attributes are snake_case in Python; the column names are the seed's, so its monitoring SQL runs
unchanged. Credits are BIGINT. Times are naive UTC. Identifier columns compare byte-for-byte on MySQL
(a binary NO PAD collation) exactly as they do on SQLite, so ``evt-A`` and ``evt-a``, ``R1`` and ``R1 ``
are two events on every database (PostgreSQL tells them apart by itself).

Exactly-once is a fact of these constraints: ``webhook_logs.eventId`` is unique per delivery;
``usage_records.usageKey`` (the gateway's request id, else the event id) is unique per usage and those
rows are never cleaned up; ``credit_transactions.reference`` is unique per balance change and
``credit_transactions.usageRecordId`` makes usage records and usage transactions one-to-one.
"""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from creditrelay.schema.credit_tables import credit_grants as credit_grants  # the grants and holds, beside the rest
from creditrelay.schema.credit_tables import credit_holds as credit_holds
from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, Id, LongText, Timestamp
from creditrelay.schema.orders import orders as orders  # what members bought (billing.orders)
from creditrelay.schema.outbox import outbox_tables
from creditrelay.schema.stripe_events import stripe_events as stripe_events  # Stripe events received
from creditrelay.schema.table_base import column
from creditrelay.schema.table_base import metadata as metadata  # what alembic and the tests compare with


class User(SQLModel, table=True):
    __tablename__ = "users"
    # no index by balance: it would cost every charge (docs/decisions/0023); the users list and the
    # metrics read the table, which holds one row per user
    __table_args__ = (sa.Index("uq_users_gatewayUserId", "gatewayUserId", unique=True), MYSQL_TABLE_OPTIONS)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    email: str = Field(max_length=191, unique=True)
    name: str | None = Field(default=None, max_length=191)
    telegram_id: int | None = column("telegramId", default=None, unique=True, sa_type=sa.BigInteger)
    balance: int = Field(default=0, sa_type=sa.BigInteger)
    # usages charged from the gateway's log still waiting for their webhook, of the keys the user has now
    # (billing.matching): while there are none, a webhook without a request id has nothing to look for
    open_poll_usages: int = column("openPollUsages", default=0, sa_type=sa.BigInteger)
    # the user's id at the gateway (a new-api user id, a LiteLLM user id): every key of that gateway user
    # that no `key link` names bills this user (billing.autolink), and GATEWAY_ENFORCEMENT=users disables
    # it. Set by the operator, or learnt in users mode from the user's linked keys while unset. One gateway
    # user bills one user: unique where set.
    gateway_user_id: str | None = column("gatewayUserId", default=None, max_length=64)
    # the generation of the user's portal links: a link names the one it was made in; revoking moves it on
    portal_epoch: int = column("portalEpoch", default=0, sa_type=sa.BigInteger)
    live_grants: int = column("liveGrants", default=0, sa_type=sa.BigInteger)  # none: a charge reads no grant
    open_holds: int = column("openHolds", default=0, sa_type=sa.BigInteger)  # none: a usage settles no hold
    created_at: datetime = column("createdAt", sa_type=Timestamp)
    updated_at: datetime = column("updatedAt", sa_type=Timestamp)


class ApiKey(SQLModel, table=True):
    """A gateway key (new-api token id) and the user it bills."""

    __tablename__ = "api_keys"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    remote_key_id: str = column("remoteKeyId", max_length=64, unique=True)
    user_id: int = column("userId", foreign_key="users.id", index=True, sa_type=Id)
    # linked by a usage of its user's gateway user (billing.autolink), not by `key link`; a `key link` of
    # the key makes it the operator's (false)
    automatic: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    # this key's share of its user's openPollUsages: moved with the key when it is linked to another user
    open_poll_usages: int = column("openPollUsages", default=0, sa_type=sa.BigInteger)
    created_at: datetime = column("createdAt", sa_type=Timestamp)
    updated_at: datetime = column("updatedAt", sa_type=Timestamp)


class GatewayKey(SQLModel, table=True):
    """Whose a gateway key is at the gateway, as its log said (polling): lets a usage that does not say it
    (seed 004's webhook) find the key's gateway user, and so the user it bills (``billing.autolink``)."""

    __tablename__ = "gateway_keys"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    remote_key_id: str = column("remoteKeyId", primary_key=True, max_length=64)
    gateway_user_id: str = column("gatewayUserId", max_length=64)
    seen_at: datetime = column("seenAt", sa_type=Timestamp)


class UsageRecord(SQLModel, table=True):
    """One usage at the gateway, charged once; never cleaned up, so a late replay is still a duplicate."""

    __tablename__ = "usage_records"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    usage_key: str = column("usageKey", max_length=160, unique=True)
    user_id: int = column("userId", foreign_key="users.id", sa_type=Id)
    remote_key_id: str = column("remoteKeyId", max_length=64)
    event_id: str | None = column("eventId", default=None, max_length=64)
    request_id: str | None = column("requestId", default=None, max_length=128)
    model: str = Field(max_length=128)
    prompt_tokens: int = column("promptTokens", default=0, sa_type=sa.BigInteger)
    completion_tokens: int = column("completionTokens", default=0, sa_type=sa.BigInteger)
    total_tokens: int = column("totalTokens", default=0, sa_type=sa.BigInteger)
    credit_cost: int = column("creditCost", sa_type=sa.BigInteger)
    source: str = Field(max_length=16)
    used_at: datetime = column("usedAt", sa_type=Timestamp, index=True)
    created_at: datetime = column("createdAt", sa_type=Timestamp)


class CreditTransaction(SQLModel, table=True):
    """One balance change; ``balance`` is the user's balance after it."""

    __tablename__ = "credit_transactions"
    __table_args__ = (
        sa.Index(None, "userId", "id"),
        # written as an expression, so that each database gets the column's name quoted its own way
        sa.CheckConstraint(
            (sa.column("type") == "usage") == sa.column("usageRecordId").is_not(None), name="usage_has_record"
        ),
        MYSQL_TABLE_OPTIONS,
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    user_id: int = column("userId", foreign_key="users.id", sa_type=Id)
    type: str = Field(max_length=16)
    amount: int = Field(sa_type=sa.BigInteger)
    balance: int = Field(sa_type=sa.BigInteger)
    reference: str = Field(max_length=191, unique=True)
    usage_record_id: int | None = column(
        "usageRecordId", default=None, foreign_key="usage_records.id", unique=True, sa_type=Id
    )
    reason: str | None = Field(default=None, max_length=255)
    source: str | None = Field(default=None, max_length=64)
    created_at: datetime = column("createdAt", sa_type=Timestamp)


class UsageMatch(SQLModel, table=True):
    """A usage that arrived by one path without a key the other path shares (``billing.matching``): open
    while ``pairedKey`` is empty, paired once the other path's arrival claimed it (never reopened)."""

    __tablename__ = "usage_matches"
    __table_args__ = (
        # by path and time: a usage's row goes in at the end of its path's range (a matchKey first index, its
        # keys random, put every batch's rows on as many pages), and a lookup reads the window it looks in
        sa.Index(None, "source", "usedAt"),
        # an arrival's key pairs once; only paired rows are in the index where a database can leave the
        # open ones out (SQLite, PostgreSQL): an open usage costs one index entry fewer
        sa.Index(
            "uq_usage_matches_pairedKey",
            "pairedKey",
            unique=True,
            sqlite_where=sa.text('"pairedKey" IS NOT NULL'),
            postgresql_where=sa.text('"pairedKey" IS NOT NULL'),
        ),
        MYSQL_TABLE_OPTIONS,
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    usage_record_id: int = column("usageRecordId", foreign_key="usage_records.id", sa_type=Id)
    user_id: int = column("userId", sa_type=Id)
    source: str = Field(max_length=16)  # how the charged usage came: webhook or poll
    match_key: str = column("matchKey", max_length=32)  # billing.matching.fingerprint
    used_at: datetime = column("usedAt", sa_type=Timestamp)
    credit_cost: int = column("creditCost", sa_type=sa.BigInteger)
    paired_key: str | None = column("pairedKey", default=None, max_length=160)
    paired_cost: int | None = column("pairedCost", default=None, sa_type=sa.BigInteger)
    paired_at: datetime | None = column("pairedAt", default=None, sa_type=Timestamp)
    # when the paired arrival was used: lets a later arrival move this pairing to a twin (billing.matching)
    paired_used_at: datetime | None = column("pairedUsedAt", default=None, sa_type=Timestamp)


class WebhookLog(SQLModel, table=True):
    """One row per delivered event id: what arrived, and what became of it. ``remoteKeyId`` is the usage's
    gateway key (none for other event types), copied from the payload so the admin's filters by key and
    by user, and replay by key, are ranges of an index: one key's deliveries of one status, newest first."""

    __tablename__ = "webhook_logs"
    __table_args__ = (
        sa.Index(None, "status", "createdAt"),
        sa.Index(None, "remoteKeyId", "status", "id"),
        MYSQL_TABLE_OPTIONS,
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    event_id: str = column("eventId", max_length=64, unique=True)
    event_type: str = column("eventType", max_length=64)
    payload: str = Field(sa_type=LongText)
    payload_hash: str = column("payloadHash", max_length=64)
    remote_key_id: str | None = column("remoteKeyId", default=None, max_length=64)
    status: str = Field(max_length=16)
    error_msg: str | None = column("errorMsg", default=None, max_length=1000)
    processed_at: datetime | None = column("processedAt", default=None, sa_type=Timestamp)
    created_at: datetime = column("createdAt", sa_type=Timestamp, index=True)


class PollState(SQLModel, table=True):
    """How far the poller has committed: every upstream log up to ``watermark`` (inclusive) is billed."""

    __tablename__ = "poll_state"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    name: str = Field(primary_key=True, max_length=64)
    watermark: int = Field(sa_type=sa.BigInteger)  # Unix seconds
    updated_at: datetime = column("updatedAt", sa_type=Timestamp)


class UnbilledUsage(SQLModel, table=True):
    """Upstream usage the poller saw but could not bill (no linked key), kept until it is charged."""

    __tablename__ = "unbilled_usage"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    usage_key: str = column("usageKey", max_length=160, unique=True)
    remote_key_id: str = column("remoteKeyId", max_length=64, index=True)
    upstream_id: int = column("upstreamId", sa_type=sa.BigInteger)
    quota: int = Field(sa_type=sa.BigInteger)
    credits: int = Field(sa_type=sa.BigInteger)
    model: str = Field(max_length=128)
    reason: str = Field(max_length=255)
    payload: str = Field(sa_type=LongText)
    used_at: datetime = column("usedAt", sa_type=Timestamp)
    created_at: datetime = column("createdAt", sa_type=Timestamp)
    charged_at: datetime | None = column("chargedAt", default=None, sa_type=Timestamp)


class ReconcileRun(SQLModel, table=True):
    """One run of ``creditrelay reconcile`` and what it found."""

    __tablename__ = "reconcile_runs"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    started_at: datetime = column("startedAt", sa_type=Timestamp, index=True)
    window_start: datetime = column("windowStart", sa_type=Timestamp)
    window_end: datetime = column("windowEnd", sa_type=Timestamp)
    fixed: bool = Field(default=False)
    discrepancies: int = Field(default=0)
    report: str = Field(sa_type=LongText)


poll_state = metadata.tables["poll_state"]
unbilled_usage = metadata.tables["unbilled_usage"]
reconcile_runs = metadata.tables["reconcile_runs"]


class ApiClient(SQLModel, table=True):
    """A project allowed to use the credit API: its source name, hashed API key and HMAC secret."""

    __tablename__ = "api_clients"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    source: str = Field(max_length=48, unique=True)
    api_key_hash: str = column("apiKeyHash", max_length=64, unique=True)
    api_key_prefix: str = column("apiKeyPrefix", max_length=12)
    secret: str | None = Field(default=None, max_length=128)  # None: CREDIT_SYNC_SECRET signs for this client
    status: str = Field(max_length=16)
    rights: str = Field(max_length=255)  # comma-separated (schema.credit_sync.RIGHTS)
    created_at: datetime = column("createdAt", sa_type=Timestamp)
    updated_at: datetime = column("updatedAt", sa_type=Timestamp)


class CreditToken(SQLModel, table=True):
    """A credit-API token once accepted, and the reference it asked for: a token applies once, whatever
    reference a replay names. Kept until its timestamp's window has passed (``expiresAt``), then cleaned
    up: past it, the token is refused as too old anyway."""

    __tablename__ = "credit_tokens"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    token: str = Field(max_length=64, unique=True)  # lowercase hex
    reference: str | None = Field(default=None, max_length=191)  # the credit_transactions reference asked for
    expires_at: datetime = column("expiresAt", sa_type=Timestamp, index=True)


class AdminSession(SQLModel, table=True):
    """A signed-in admin page session: the cookie carries a random token, stored here only as its SHA-256;
    sign-out ends it (``endedAt``), so a copied cookie stops working too."""

    __tablename__ = "admin_sessions"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    token_hash: str = column("tokenHash", max_length=64, unique=True)
    csrf: str = Field(max_length=64)
    created_at: datetime = column("createdAt", sa_type=Timestamp)
    expires_at: datetime = column("expiresAt", sa_type=Timestamp, index=True)
    ended_at: datetime | None = column("endedAt", default=None, sa_type=Timestamp)


class GatewayState(SQLModel, table=True):
    """What the gateway should do with a user's access (``billing.enforcement``): the latest intent,
    ``desired`` (suspend or resume) at ``version``, written in the transaction whose balance change crossed
    the line; ``applied`` is the version the gateway last confirmed. Work exists while ``version >
    applied``; an enforcer claims it with a lease (``leaseOwner``, ``leaseUntil``)."""

    __tablename__ = "gateway_states"
    # nextAttemptAt is set only while an intent waits: the enforcer's and the metrics' reads are ranges of
    # its index, however many users were ever suspended
    __table_args__ = (sa.Index(None, "nextAttemptAt"), sa.Index(None, "desired"), MYSQL_TABLE_OPTIONS)

    user_id: int = Field(
        primary_key=True,
        foreign_key="users.id",
        sa_type=Id,
        sa_column_kwargs={"name": "userId", "autoincrement": False},
    )
    desired: str = Field(max_length=16)
    version: int = Field(sa_type=sa.BigInteger)
    applied: int = Field(default=0, sa_type=sa.BigInteger)
    attempts: int = Field(default=0)
    next_attempt_at: datetime | None = column("nextAttemptAt", default=None, sa_type=Timestamp)
    lease_owner: str | None = column("leaseOwner", default=None, max_length=64)
    lease_until: datetime | None = column("leaseUntil", default=None, sa_type=Timestamp)
    last_error: str | None = column("lastError", default=None, max_length=255)
    # the targets the gateway confirmed for the intent at progressVersion, one JSON string per line (a key
    # id may hold any character): a push that ran out of time resumes with the others
    progress: str | None = Field(default=None, sa_type=LongText)
    progress_version: int | None = column("progressVersion", default=None, sa_type=sa.BigInteger)
    updated_at: datetime = column("updatedAt", sa_type=Timestamp)


class GatewayCall(SQLModel, table=True):
    """Every call made to the gateway to suspend or resume a user, with its answer."""

    __tablename__ = "gateway_calls"
    __table_args__ = (sa.Index(None, "userId", "id"), MYSQL_TABLE_OPTIONS)

    id: int | None = Field(default=None, primary_key=True, sa_type=Id)
    user_id: int = column("userId", sa_type=Id)
    target: str = Field(max_length=80)  # "token 17", "user 42" or "key <a LiteLLM key hash>"
    action: str = Field(max_length=16)  # suspend | resume
    ok: bool
    status_code: int | None = column("statusCode", default=None)
    answer: str = Field(max_length=255)
    at: datetime = Field(sa_type=Timestamp)


class Lease(SQLModel, table=True):
    """Work that one instance of many does at a time (the poller's passes): ``holder`` does it until
    ``expiresAt``, renewing as it goes; once that has passed, any instance may take it over
    (``billing.leases``)."""

    __tablename__ = "leases"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: datetime = column("expiresAt", sa_type=Timestamp)


outbox_events, outbox_attempts = outbox_tables(metadata)  # what billing sends (alerts), delivered by the relay
users = metadata.tables["users"]
api_keys = metadata.tables["api_keys"]
usage_records = metadata.tables["usage_records"]
credit_transactions = metadata.tables["credit_transactions"]
webhook_logs = metadata.tables["webhook_logs"]
api_clients = metadata.tables["api_clients"]
credit_tokens = metadata.tables["credit_tokens"]
admin_sessions = metadata.tables["admin_sessions"]
usage_matches = metadata.tables["usage_matches"]
gateway_states = metadata.tables["gateway_states"]
gateway_calls = metadata.tables["gateway_calls"]
leases = metadata.tables["leases"]
gateway_keys = metadata.tables["gateway_keys"]
