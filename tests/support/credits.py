"""Credit API helpers for the tests: a registered client, a Telegram user, tokens signed with stdlib hmac."""

import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from creditrelay.billing.accounts import NewUser, create_user
from creditrelay.billing.clients import add_client
from creditrelay.schema.database import utc
from creditrelay.schema.transactions import run_transaction

TELEGRAM_ID = 123456789


@dataclass(frozen=True)
class Credentials:
    source: str
    api_key: str
    secret: str


def register_client(engine: Engine, source: str = "media_bot", rights: Sequence[str] | None = None) -> Credentials:
    """A client with its own secret, and ``rights`` (default: a new client's)."""

    def work(connection: Connection) -> dict[str, Any]:
        if rights is None:
            return add_client(connection, source, utc(time.time()))
        return add_client(connection, source, utc(time.time()), rights=rights)

    made = run_transaction(engine, work)
    return Credentials(made["source"], made["api_key"], made["secret"])


def add_telegram_user(engine: Engine, telegram_id: int = TELEGRAM_ID, credits: int = 0, name: str = "Li Lei") -> int:
    def work(connection: Connection) -> int:
        new = NewUser(f"tg{telegram_id}@example.com", name, telegram_id, credits)
        return int(create_user(connection, new, utc(time.time())).id)

    return run_transaction(engine, work)


def signed(
    creds: Credentials,
    amount: int,
    telegram_id: int = TELEGRAM_ID,
    reference: str | None = None,
    *,
    at: float | None = None,
    reason: str = "test",
    version: int = 1,
) -> dict[str, Any]:
    """A sync body signed now (or ``at``) with the token of ``version``: 1 leaves the reference unsigned, 2
    signs it too."""
    timestamp = int(time.time() if at is None else at)
    message = f"{telegram_id}:{amount}:{creds.source}:{timestamp}"
    if version == 2:
        message = f"v2:{message}:{reference or ''}"
    body: dict[str, Any] = {
        "telegram_id": telegram_id,
        "amount": amount,
        "source": creds.source,
        "reason": reason,
        "timestamp": timestamp,
        "token": hmac.new(creds.secret.encode(), message.encode(), hashlib.sha256).hexdigest(),
    }
    if reference is not None:
        body["external_reference"] = reference
    return body
