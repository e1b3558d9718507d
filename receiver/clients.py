"""How a credit API request proves it comes from a registered client (``billing.clients``) — its source is
the API key's own, its timestamp is fresh, and its token is signed with the client's secret — and whether
that client may do what it asks. The edge's work: billing sees only verified, permitted requests.

A right is decided from the API key alone, before any member is looked up, so a refusal says nothing about
which members exist.
"""

import hmac

from creditrelay.billing.clients import Client
from creditrelay.billing.credit_sync import SyncRefused, SyncUnavailable
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
    if not hmac.compare_digest(body.source.encode(), client.source.encode()):
        raise SyncRefused("source does not match the API key")
    if abs(now - body.timestamp) > TOKEN_WINDOW_SECONDS:
        raise SyncRefused(f"timestamp is more than {TOKEN_WINDOW_SECONDS} seconds away from the server's clock")
    secret = client.secret or default_secret
    if secret is None:
        raise SyncUnavailable("no secret for this client and CREDIT_SYNC_SECRET is not set")
    if not token_matches(secret, body):
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
