"""Users and the gateway keys that bill them."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from creditrelay.billing.grants import GrantTerms
from creditrelay.billing.ledger import CreditChange, CreditOutcome, CreditStatus, apply_credit
from creditrelay.billing.matching import move_open_polls
from creditrelay.billing.rows import lock_balances
from creditrelay.billing.rules import rules_of
from creditrelay.billing.watch import SUSPEND, queue_intents, requeue
from creditrelay.schema.database import upsert
from creditrelay.schema.errors import Conflict, InvalidInput, TransactionConflict
from creditrelay.schema.money import MAX_AMOUNT, MAX_BALANCE
from creditrelay.schema.statements import savepoint
from creditrelay.schema.tables import api_keys, users
from creditrelay.schema.wire import BIGINT_MAX, plain_int


class AccountError(InvalidInput):
    """An account operation cannot be done as asked; the message says why."""


class ReferenceConflict(Conflict):
    """A top-up reference was already used for another user or amount."""


@dataclass(frozen=True)
class NewUser:
    email: str
    name: str | None = None
    telegram_id: int | None = None
    opening_credits: int = 0
    gateway_user_id: str | None = None  # everything this gateway user spends bills the new user


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    name: str | None
    telegram_id: int | None
    balance: int
    created_at: datetime
    gateway_user_id: str | None

    @classmethod
    def of(cls, row: sa.Row[Any]) -> "User":
        return cls(row.id, row.email, row.name, row.telegramId, row.balance, row.createdAt, row.gatewayUserId)


@dataclass(frozen=True, slots=True)
class KeyLink:
    """A gateway key and the user it bills."""

    remote_key_id: str
    user_id: int
    email: str
    automatic: bool = False  # linked by a usage of the user's gateway user, not by `key link`


def create_user(connection: Connection, new: NewUser, now: datetime) -> User:
    """Create a user; a non-zero opening balance is written as the user's first transaction."""
    email = new.email.strip().lower()
    if "@" not in email or len(email) > 191 or any(c.isspace() for c in email):
        raise AccountError(f"not an email address: {new.email[:200]!r}")
    if new.name is not None and len(new.name) > 191:
        raise AccountError("name must be at most 191 characters")
    if new.telegram_id is not None and not 0 < new.telegram_id <= BIGINT_MAX:
        raise AccountError(f"telegram id must be a positive integer up to {BIGINT_MAX}")
    if not 0 <= new.opening_credits <= MAX_AMOUNT:
        raise AccountError(f"opening credits must be 0 to {MAX_AMOUNT}")
    gateway_user = None if new.gateway_user_id is None else gateway_user_text(connection, new.gateway_user_id)
    try:
        with savepoint(connection, "create_user"):
            row = {"email": email, "name": new.name, "telegramId": new.telegram_id, "balance": 0}
            created = connection.execute(
                users.insert().values(**row, createdAt=now, updatedAt=now)
            ).inserted_primary_key
    except IntegrityError:
        taken = f"email {email}" if new.telegram_id is None else f"email {email} or telegram id {new.telegram_id}"
        raise AccountError(f"a user with {taken} exists") from None
    assert created is not None
    user_id = int(created[0])
    if gateway_user is not None:
        set_gateway_user(connection, user_id, gateway_user, now)
    if new.opening_credits:
        change = CreditChange(user_id, new.opening_credits, f"opening:{user_id}", "opening", reason="opening balance")
        apply_credit(connection, change, now)
    user = find_user(connection, str(user_id))
    rules = rules_of(connection)
    if rules.enforce and rules.suspended(user.balance):
        queue_intents(connection, [user_id], SUSPEND, now)  # starts suspended: its keys are disabled when linked
    return user


def find_user(connection: Connection, email_or_id: str) -> User:
    """A user by numeric id or by email."""
    wanted = email_or_id.strip()
    number = plain_int(wanted)
    if number is not None:
        row = connection.execute(sa.select(users).where(users.c.id == number)).one_or_none()
    elif wanted.isascii() and wanted.isdigit():  # an id past BIGINT: nobody has it
        row = None
    else:
        row = connection.execute(sa.select(users).where(users.c.email == wanted.lower())).one_or_none()
    if row is None:
        raise AccountError(f"no user {email_or_id!r}")
    return User.of(row)


def list_users(
    connection: Connection, *, limit: int = 50, after: int | None = None, below: int | None = None
) -> list[User]:
    """Users in id order, ``limit`` at a time after the id ``after``; with ``below``, only those whose
    balance is under it (``below=0``: who owes)."""
    query = sa.select(users).order_by(users.c.id).limit(limit)
    if after is not None:
        query = query.where(users.c.id > after)
    if below is not None:
        query = query.where(users.c.balance < below)
    return [User.of(row) for row in connection.execute(query)]


def _remote_key(remote_key_id: str) -> str:
    """A gateway key id as every way in takes it (the command line, the pages, the API): 1 to 64 characters,
    no white space or control characters inside."""
    key = remote_key_id.strip()
    if not key or len(key) > 64 or not key.isprintable() or any(c.isspace() for c in key):
        raise AccountError("a gateway key id is 1 to 64 characters, without spaces or control characters")
    return key


def link_key(connection: Connection, remote_key_id: str, user_id: int, now: datetime) -> KeyLink:
    """Make the gateway key bill ``user_id``; an existing link is moved to that user, with the key's open
    polled usages (``matching.move_open_polls``). The users' rows are locked first, as every transaction
    takes them, then the key's."""
    key = _remote_key(remote_key_id)
    owner = sa.select(api_keys.c.userId).where(api_keys.c.remoteKeyId == key)
    before = connection.execute(owner).scalar_one_or_none()
    lock_balances(connection, {user_id} | ({before} if before is not None else set()))
    if connection.execute(owner.with_for_update()).scalar_one_or_none() != before:
        raise TransactionConflict(f"key {key} was linked by another transaction meanwhile")
    row = {"remoteKeyId": key, "userId": user_id, "automatic": False, "createdAt": now, "updatedAt": now}
    update = ["userId", "automatic", "updatedAt"]  # an automatic link becomes the operator's
    connection.execute(upsert(api_keys, connection.dialect.name, row, ["remoteKeyId"], update))
    move_open_polls(connection, key, before, user_id)
    if rules_of(connection).enforce:  # the key takes its new user's state: disabled if suspended
        requeue(connection, user_id, now)
    [link] = list_keys(connection, remote_key_id=key)
    return link


def gateway_user_text(connection: Connection, gateway_user_id: str) -> str:
    """A gateway user id as every way in takes it: 1 to 64 characters without spaces (new-api's are
    numbers, LiteLLM's any text), and not the gateway account creditrelay calls as (NEW_API_USER_ID: in
    ``tokens`` mode it owns every key, so it is nobody's in particular)."""
    text = gateway_user_id.strip()
    if not text or len(text) > 64 or not text.isprintable() or any(c.isspace() for c in text):
        raise AccountError("a gateway user id is 1 to 64 characters, without spaces or control characters")
    number = plain_int(text)
    if number is not None and not 0 < number <= BIGINT_MAX:
        raise AccountError(f"a numeric gateway user id is a positive integer up to {BIGINT_MAX}")
    admin = rules_of(connection).admin_gateway_user
    if admin is not None and (text == admin or (number is not None and str(number) == admin)):
        raise AccountError(
            f"gateway user {text} is NEW_API_USER_ID, the account creditrelay calls new-api as: it cannot bill"
            " one user (link its keys one by one with `creditrelay key link`)"
        )
    return str(number) if number is not None else text


def set_gateway_user(connection: Connection, user_id: int, gateway_user_id: str | None, now: datetime) -> User:
    """Map the user to a gateway user (``None``: clear it): everything that gateway user spends with keys
    nobody linked bills this user from now on (``billing.autolink``), and GATEWAY_ENFORCEMENT=users
    disables it while the user is suspended; the user's current state is pushed to it. Keys linked
    automatically before stay linked. One gateway user bills one user: the unique column refuses a second."""
    text = None if gateway_user_id is None else gateway_user_text(connection, gateway_user_id)
    if user_id not in lock_balances(connection, [user_id]):
        raise AccountError(f"no user {user_id}")
    try:
        with savepoint(connection, "set_gateway_user"):
            connection.execute(users.update().where(users.c.id == user_id).values(gatewayUserId=text, updatedAt=now))
    except IntegrityError:
        holder = connection.execute(sa.select(users.c.email).where(users.c.gatewayUserId == text)).scalar()
        raise AccountError(f"gateway user {text} already bills {holder or 'another user'}") from None
    if text is not None:
        requeue(connection, user_id, now)
    return find_user(connection, str(user_id))


def unlink_key(connection: Connection, remote_key_id: str) -> KeyLink:
    """The gateway key bills nobody any more: its usages are logged as failed (unknown key) until it is
    linked again, and replayable then. What it was charged stays charged."""
    key = _remote_key(remote_key_id)
    links = list_keys(connection, remote_key_id=key)
    if not links:
        raise AccountError(f"gateway key {key!r} is not linked")
    connection.execute(api_keys.delete().where(api_keys.c.remoteKeyId == key))
    return links[0]


def list_keys(connection: Connection, *, user_id: int | None = None, remote_key_id: str | None = None) -> list[KeyLink]:
    """Linked gateway keys, by user then key."""
    query = (
        sa.select(api_keys.c.remoteKeyId, api_keys.c.userId, users.c.email, api_keys.c.automatic)
        .join(users, users.c.id == api_keys.c.userId)
        .order_by(api_keys.c.userId, api_keys.c.remoteKeyId)
    )
    if user_id is not None:
        query = query.where(api_keys.c.userId == user_id)
    if remote_key_id is not None:
        query = query.where(api_keys.c.remoteKeyId == remote_key_id)
    return [KeyLink(row.remoteKeyId, row.userId, row.email, bool(row.automatic)) for row in connection.execute(query)]


def top_up(
    connection: Connection,
    user_id: int,
    amount: int,
    reference: str,
    now: datetime,
    reason: str | None = None,
    terms: GrantTerms | None = None,
) -> CreditOutcome:
    """Add credits to a user once per reference (an order id, a ticket): a repeat is a duplicate. With
    ``terms`` (an expiry, a priority, kind ``promo``) the credits are a grant (``billing.grants``).

    Raises ``AccountError`` for a bad amount or reference, ``ReferenceConflict`` when the reference was
    used for another user or amount, ``UnknownUser`` when there is no such user.
    """
    if not 0 < amount <= MAX_AMOUNT:
        raise AccountError(f"amount must be a positive integer up to {MAX_AMOUNT}")
    if terms is not None:
        terms.check(now)
    change = CreditChange(user_id, amount, f"topup:{reference}", "topup", reason=reason or None, grant=terms)
    return _apply(connection, change, now)


def adjust(
    connection: Connection, user_id: int, amount: int, reference: str, reason: str, now: datetime
) -> CreditOutcome:
    """Take credits back once per reference, with the reason the operator gives (a top-up made by
    mistake, a refund charged back): recorded in the ledger as an ``adjustment`` beside top-ups. An
    adjustment may take the balance below zero — it records what is owed; it never refuses for want of
    credit."""
    if not -MAX_AMOUNT <= amount < 0:
        raise AccountError(f"amount must be a negative integer down to -{MAX_AMOUNT} (to add credits: topup)")
    if not reason.strip():
        raise AccountError("reason: say why the credits are taken back")
    change = CreditChange(user_id, amount, f"adjust:{reference}", "adjustment", reason=reason, allow_overdraft=True)
    return _apply(connection, change, now)


def _apply(connection: Connection, change: CreditChange, now: datetime) -> CreditOutcome:
    reference = change.reference.partition(":")[2]
    if not 0 < len(reference) <= 128:
        raise AccountError("reference must be 1 to 128 characters")
    if change.reason is not None and len(change.reason) > 255:
        raise AccountError("reason must be at most 255 characters")
    outcome = apply_credit(connection, change, now)
    if outcome.status is CreditStatus.CONFLICT:
        raise ReferenceConflict(f"reference {reference!r} was used for another {change.type}")
    if outcome.status is CreditStatus.OUT_OF_RANGE:
        raise AccountError(f"amount: the balance would pass ±{MAX_BALANCE} credits")
    return outcome
