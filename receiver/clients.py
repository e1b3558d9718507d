"""How a credit API request proves it comes from a registered client (``billing.clients``): its source is
the API key's own, its timestamp is fresh, and its token is signed with the client's secret. The edge's
work: billing sees only verified requests.
"""

import hmac

from creditrelay.billing.clients import Client
from creditrelay.billing.credit_sync import SyncRefused, SyncUnavailable
from creditrelay.schema.credit_sync import TOKEN_WINDOW_SECONDS, SyncBody, token_matches


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
