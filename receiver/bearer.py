"""The one check of a bearer token: ``Authorization: Bearer <token>``, compared in constant time."""

import hmac

from starlette.requests import Request

from creditrelay.receiver.errors import ApiError


def require_bearer(request: Request, token: str | None, setting: str) -> None:
    """Refuse unless the request carries ``token``, the value of ``setting``: 403 while it is unset (the
    endpoint is off), 401 for a missing or wrong token."""
    if token is None:
        raise ApiError(403, f"This endpoint is off: set {setting}")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, f"The {setting} is required (Authorization: Bearer …)")
