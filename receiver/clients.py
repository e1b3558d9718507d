"""How a credit API request proves it comes from a registered client (``billing.clients``) — its source is
the API key's own, its timestamp is fresh, and its token is signed with the client's secret — and whether
that client may do what it asks. The edge's work: billing sees only verified, permitted requests.

A right is decided from the API key alone, before any member is looked up, so a refusal says nothing about
which members exist.
"""

import hmac
from collections.abc import Callable

from creditrelay.billing.clients import Client
from creditrelay.billing.credit_sync import SyncRefused, SyncUnavailable
from creditrelay.schema.credit_holds import CaptureBody, HoldBody, VoidBody, expected_token
from creditrelay.schema.credit_sync import (
    BALANCE,
    CREDIT,
    DEBIT,
    RECORDS,
    RECORDS_ALL,
    TOKEN_WINDOW_SECONDS,
    SyncBody,
    token_matches,
)
from creditrelay.schema.errors import Forbidden

_DOING = {BALANCE: "read balances", RECORDS: "read records", CREDIT: "add credits", DEBIT: "deduct credits"}


def verify_request(client: Client, body: SyncBody, now: float, default_secret: str | None) -> None:
    """Raise ``SyncRefused`` unless the body is the client's own, fresh, and signed with its secret."""
    _verify(client, body.source, body.timestamp, now, default_secret, lambda secret: token_matches(secret, body))


def verify_hold_request(
    client: Client, body: HoldBody | CaptureBody | VoidBody, hold_id: int | None, now: float, default_secret: str | None
) -> None:
    """``verify_request`` for the holds' bodies (``schema.credit_holds``), each signed its own way."""

    def matches(secret: str) -> bool:
        return hmac.compare_digest(expected_token(secret, body, hold_id), body.token.lower())

    _verify(client, body.source, body.timestamp, now, default_secret, matches)


def _verify(
    client: Client,
    source: str,
    timestamp: int,
    now: float,
    default_secret: str | None,
    matches: Callable[[str], bool],
) -> None:
    if not hmac.compare_digest(source.encode(), client.source.encode()):
        raise SyncRefused("source does not match the API key")
    if abs(now - timestamp) > TOKEN_WINDOW_SECONDS:
        raise SyncRefused(f"timestamp is more than {TOKEN_WINDOW_SECONDS} seconds away from the server's clock")
    secret = client.secret or default_secret
    if secret is None:
        raise SyncUnavailable("no secret for this client and CREDIT_SYNC_SECRET is not set")
    if not matches(secret):
        raise SyncRefused("Invalid token")


def require_right(client: Client, right: str) -> None:
    """Raise ``Forbidden``, naming the right, unless ``client`` holds ``right``."""
    if right not in client.rights:
        raise Forbidden(f"This API key may not {_DOING[right]}: it lacks the right {right!r}")


def records_source(client: Client) -> str | None:
    """Whose entries of a member ``client`` may read: everyone's (None) with ``records:all``, else its own
    source's; ``Forbidden`` with neither right."""
    if RECORDS_ALL in client.rights:
        return None
    require_right(client, RECORDS)
    return client.source
