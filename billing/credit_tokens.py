"""Credit API tokens, each used once: the first authenticated use of a token records it, with the
reference that request asked for, whatever became of the request (applied, refused, unknown member), so a
copy of the request — with the same reference or any other — never applies later.

Whether a token is new is the insert's say (``ON CONFLICT DO NOTHING`` / ``INSERT IGNORE`` on its unique
key), never a read first. A transaction inserts its tokens in token order before it locks any user, so two
transactions using the same tokens wait for each other rather than deadlock, and the one that waits sees
the other's tokens as used once it commits.

A token is kept until its request's window has passed (``expiresAt``) and a margin more; past the window
the request is refused as too old before any token is looked up, so forgetting the token then is safe.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.inserts import insert_new
from creditrelay.schema.statements import fetch_in
from creditrelay.schema.tables import credit_tokens

# Kept this long past a token's window: more than a request can spend between the check of its timestamp
# and its transaction (lock waits, retries), and than the clocks of the hosts running serve and cleanup
# disagree by.
CLEANUP_MARGIN = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class TokenUse:
    """A request's token as the request names it: lowercase, the reference it asks for, when its window ends."""

    token: str
    reference: str
    expires_at: datetime


def use_tokens(connection: Connection, uses: Sequence[TokenUse]) -> list[str | None]:
    """Record each token's first use; for each use, in order: None when it is its token's first use, else
    the reference its token was first used with ("" if that record is gone). Of the same token twice in
    ``uses``, the first is the first use."""
    first: dict[str, int] = {}
    for index, use in enumerate(uses):
        first.setdefault(use.token, index)
    rows = [
        {"token": use.token, "reference": use.reference, "expiresAt": use.expires_at}
        for use in sorted((uses[index] for index in first.values()), key=lambda use: use.token)
    ]
    new = insert_new(connection, credit_tokens, rows, "token")
    recorded = {token: uses[index].reference for token, index in first.items() if token in new}
    old = sorted(set(first) - new)
    recorded |= dict(
        fetch_in(
            connection,
            "used_tokens",
            lambda tokens: sa.select(credit_tokens.c.token, credit_tokens.c.reference).where(
                credit_tokens.c.token.in_(tokens)
            ),
            old,
        )
    )
    return [
        None if use.token in new and first[use.token] == index else recorded.get(use.token) or ""
        for index, use in enumerate(uses)
    ]


def delete_expired(connection: Connection, now: datetime, batch: int) -> int:
    """Delete up to ``batch`` tokens whose window ended more than ``CLEANUP_MARGIN`` before ``now``, oldest
    first; how many."""
    ids = connection.execute(
        sa.select(credit_tokens.c.id)
        .where(credit_tokens.c.expiresAt < now - CLEANUP_MARGIN)
        .order_by(credit_tokens.c.expiresAt)
        .limit(batch)
    ).scalars()
    found = list(ids)
    if found:
        connection.execute(credit_tokens.delete().where(credit_tokens.c.id.in_(found)))
    return len(found)
