"""Reading a request body within a size limit, and checking it is declared as JSON.

These work on the ASGI ``receive`` and a case-insensitive header mapping (Starlette's ``Headers``), or on a
plain dict of lower-case names (``header_map``) where the webhook route runs without a ``Request``.
"""

from collections.abc import Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from receiver.errors import ApiError


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by name (ASGI servers lower-case names); of a repeated name, the first value,
    as Starlette's ``Headers.get`` gives."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


def _check_declared(headers: Mapping[str, str], limit: int) -> None:
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"Body larger than {limit} bytes")


def _grown(body: bytes, chunk: bytes, limit: int) -> bytes:
    body += chunk
    if len(body) > limit:
        raise ApiError(413, f"Body larger than {limit} bytes")
    return body


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The raw body from ASGI ``receive``, refused with 413 as soon as it is known to exceed ``limit``
    bytes."""
    _check_declared(headers, limit)
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body = _grown(body, message.get("body", b""), limit)
        if not message.get("more_body", False):
            return body


async def read_limited(request: Request, limit: int) -> bytes:
    """``read_body`` for a Starlette request (its stream, which knows whether the body was read before)."""
    _check_declared(request.headers, limit)
    body = b""
    async for chunk in request.stream():
        body = _grown(body, chunk, limit)
    return body


def require_json(headers: Mapping[str, str]) -> None:
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(400, "Content-Type must be application/json")
