"""The one place errors are rendered as JSON: every ``CreditRelayError`` by its status and public message,
a statement the database refused, a client that went away, and (logged with its traceback, at most once
a minute) a bug."""

from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from creditrelay.receiver.logs import Noisy
from creditrelay.receiver.metrics import UNAUTHENTICATED, UNEXPECTED_ERRORS
from creditrelay.schema.errors import CreditRelayError, DatabaseUnavailable

log = structlog.get_logger()


class ApiError(CreditRelayError):
    """An answer other than success, decided at the edge: its status, a message safe to show the caller,
    headers and extra fields of the JSON answer."""

    def __init__(self, status_code: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status_code = status_code  # type: ignore[misc]  # per answer, where the class has a default
        self.message = message
        self.headers = headers  # type: ignore[misc]
        self.extra = extra


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"success": False, "message": message, **extra}, status_code=status_code, headers=headers)


_UNAUTHENTICATED = Noisy("unauthenticated_requests")
_UNEXPECTED = Noisy("unexpected_errors", level="error")
_AREAS = ("/api/webhooks", "/api/credits", "/api/gateway", "/api/admin", "/api/portal", "/api/payments", "/metrics")


def _area(path: str) -> str:
    """The part of the API a path belongs to (a metric label of a few values, whatever path was sent)."""
    return next((area for area in _AREAS if path.startswith(area)), "other")


async def render_error(request: Request, exc: Exception) -> Response:
    """Any ``CreditRelayError``: its status, its public message, its headers (and an ``ApiError``'s extra
    fields). An outage is logged with what the driver said, which the answer does not repeat. A request
    without valid credentials is counted, and logged at most once a minute: anyone can send them."""
    assert isinstance(exc, CreditRelayError)
    if isinstance(exc, DatabaseUnavailable):
        log.warning("database_unavailable", error=str(exc))
    elif exc.status_code == 401:
        area = _area(request.url.path)
        UNAUTHENTICATED.labels(area).inc()
        _UNAUTHENTICATED(area=area)
    extra = exc.extra if isinstance(exc, ApiError) else {}
    return error_response(exc.status_code, exc.public_message, exc.headers, **extra)


async def render_database_error(_request: Request, exc: Exception) -> Response:
    """The database refused this request's work (not an outage): nothing of it was committed."""
    log.error("database_error", error=str(exc))
    return error_response(500, "The database refused this request; nothing was recorded or charged")


async def render_http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail)


async def render_disconnect(_request: Request, _exc: Exception) -> Response:
    """The client went away before its body arrived: nothing to answer, nothing done; not an error of ours."""
    log.debug("client_disconnected")
    return Response(status_code=400)


async def render_unexpected(_request: Request, exc: Exception) -> Response:
    """A bug: answered in JSON like every other error, counted, and logged with its traceback at most once
    a minute (whoever found it could otherwise repeat it into the log)."""
    UNEXPECTED_ERRORS.inc()
    _UNEXPECTED(error=repr(exc), exc_info=exc)
    return error_response(500, "Internal error; nothing was recorded or charged by this request")


EXCEPTION_HANDLERS = {
    CreditRelayError: render_error,
    SQLAlchemyError: render_database_error,
    HTTPException: render_http_exception,
    ClientDisconnect: render_disconnect,
    Exception: render_unexpected,
}
