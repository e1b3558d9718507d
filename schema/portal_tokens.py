"""Members' portal links: a signed token that names one user, the generation of that user's links it
belongs to, and when it expires (docs/portal.md).

``<user id>.<epoch>.<expires, Unix seconds>.<signature>``, the signature being the first 32 bytes of
HMAC-SHA256 over ``PURPOSE`` and those three numbers, base64url without padding. The purpose is signed
with them, so no other signature of ours made with the same secret (a webhook's, a notice's) is ever a
portal token, and a portal token is never anything else: admin sessions are random tokens looked up in the
database, so a portal token cannot open one either. Comparisons are constant-time. A token names its
user by id: the member sees their own id in their link, nothing else.
"""

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

PURPOSE = b"creditrelay portal link v1\n"
MAX_DAYS = 365
DEFAULT_DAYS = 30
_TOKEN = re.compile(r"([1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})\.([1-9][0-9]{0,11})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class PortalClaim:
    """What a token says (its signature checked): whose it is, of which generation, until when."""

    user_id: int
    epoch: int
    expires: int  # Unix seconds


def _signature(key: bytes, user_id: int, epoch: int, expires: int) -> str:
    mac = hmac.new(key, PURPOSE + f"{user_id}.{epoch}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def portal_key(secret: bytes) -> bytes:
    """The key portal tokens are signed with, derived from a server secret for this one purpose."""
    return hmac.new(secret, b"creditrelay portal key", hashlib.sha256).digest()


def sign_portal_token(key: bytes, claim: PortalClaim) -> str:
    return f"{claim.user_id}.{claim.epoch}.{claim.expires}.{_signature(key, claim.user_id, claim.epoch, claim.expires)}"


def read_portal_token(keys: Sequence[bytes], token: str, now: float) -> PortalClaim | None:
    """The claim of a well-formed, authentic, unexpired ``token`` (signed by any of ``keys``), else None.
    Whether the user still has that epoch is the ledger's to say."""
    found = _TOKEN.fullmatch(token)
    if found is None:
        return None
    user_id, epoch, expires = int(found[1]), int(found[2]), int(found[3])
    given = found[4].encode()
    authentic = False
    for key in keys:  # every key compared, so the time taken does not say which one signed
        authentic |= hmac.compare_digest(_signature(key, user_id, epoch, expires).encode(), given)
    if not authentic or expires <= now:
        return None
    return PortalClaim(user_id, epoch, expires)
