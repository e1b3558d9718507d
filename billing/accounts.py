"""Users and the gateway keys that bill them."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from creditrelay.billing.ledger import CreditChange, CreditOutcome, CreditStatus, apply_credit
from creditrelay.schema.database import upsert
from creditrelay.schema.errors import Conflict, InvalidInput
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


def user_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "email": row.email,
        "name": row.name,
        "telegramId": row.telegramId,
        "balance": row.balance,
        "createdAt": row.createdAt.isoformat() + "Z",
    }


def create_user(connection: Connection, new: NewUser, now: datetime) -> dict[str, Any]:
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
    if new.opening_credits:
        change = CreditChange(user_id, new.opening_credits, f"opening:{user_id}", "opening", reason="opening balance")
        apply_credit(connection, change, now)
    return find_user(connection, str(user_id))


def find_user(connection: Connection, email_or_id: str) -> dict[str, Any]:
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
    return user_json(row)


def link_key(connection: Connection, remote_key_id: str, user_id: int, now: datetime) -> dict[str, Any]:
    """Make the gateway key bill ``user_id``; an existing link is moved to that user."""
    key = remote_key_id.strip()
    if not key or len(key) > 64:
        raise AccountError("a remote key id is 1 to 64 characters")
    row = {"remoteKeyId": key, "userId": user_id, "createdAt": now, "updatedAt": now}
    connection.execute(upsert(api_keys, connection.dialect.name, row, ["remoteKeyId"], ["userId", "updatedAt"]))
    return {"remoteKeyId": key, "userId": user_id}


def top_up(
    connection: Connection, user_id: int, amount: int, reference: str, now: datetime, reason: str | None = None
) -> CreditOutcome:
    """Add credits to a user once per reference (an order id, a ticket): a repeat is a duplicate.

    Raises ``AccountError`` for a bad amount or reference, ``ReferenceConflict`` when the reference was
    used for another user or amount, ``UnknownUser`` when there is no such user.
    """
    if not 0 < amount <= MAX_AMOUNT:
        raise AccountError(f"amount must be a positive integer up to {MAX_AMOUNT}")
    if not 0 < len(reference) <= 128:
        raise AccountError("reference must be 1 to 128 characters")
    if reason is not None and len(reason) > 255:
        raise AccountError("reason must be at most 255 characters")
    change = CreditChange(user_id, amount, f"topup:{reference}", "topup", reason=reason or None)
    outcome = apply_credit(connection, change, now)
    if outcome.status is CreditStatus.CONFLICT:
        raise ReferenceConflict(f"reference {reference!r} was used for another top-up")
    if outcome.status is CreditStatus.OUT_OF_RANGE:
        raise AccountError(f"amount: the balance would pass the maximum of {MAX_BALANCE} credits")
    return outcome
