"""The one error hierarchy: every error creditrelay raises on purpose is a ``CreditRelayError``, with a
message safe to show the caller and the HTTP status it means at the edge, where it has one.

The receiver renders them all through one handler; the command line prints their message on one line.
An error that only steers a retry (``TransactionConflict``) is not part of it: it never leaves billing
and ``run_transaction``.
"""

from typing import ClassVar


class CreditRelayError(Exception):
    """Something creditrelay refuses or cannot do; ``str(error)`` says what, for whoever asked."""

    status_code: ClassVar[int] = 500
    headers: ClassVar[dict[str, str] | None] = None

    @property
    def public_message(self) -> str:
        """What an HTTP answer says (the message, unless it could carry internals)."""
        return str(self)


class SettingsError(CreditRelayError, ValueError):
    """A configuration value is missing or unusable; the message names the variable."""


class UnsupportedDatabase(CreditRelayError):
    """The database server lacks something creditrelay relies on."""


class DatabaseUnavailable(CreditRelayError):
    """The database did not answer (down, unreachable, locked past the timeout); nothing was written. The
    message is the driver's, for logs; callers are told to retry."""

    status_code = 503
    headers = {"Retry-After": "5"}  # noqa: RUF012 - a constant, never mutated

    @property
    def public_message(self) -> str:
        return "Database unavailable, retry later"


class InvalidInput(CreditRelayError, ValueError):
    """A value sent to us is not what it must be; the message names the field."""

    status_code = 400


class NotFound(CreditRelayError, LookupError):
    """What was asked for does not exist."""

    status_code = 404


class Conflict(CreditRelayError):
    """The request contradicts an earlier one (a reference used for another amount, an id for another body)."""

    status_code = 409


class Unauthorized(CreditRelayError):
    """Missing or wrong credentials, signature or token."""

    status_code = 401


class Forbidden(CreditRelayError):
    """The caller is known, but may not do this; the message says which right it lacks."""

    status_code = 403


class UpstreamError(CreditRelayError):
    """A gateway did not answer usefully (down, refused, or not the documented shape)."""

    status_code = 502


class GatewaySetupError(UpstreamError):
    """The gateway cannot work as configured — nothing listens at its address, the name does not resolve,
    the credentials are refused, the API is not at that path: retrying does not help, so it is reported at
    once; the message names the setting to fix."""


class TransactionConflict(Exception):
    """A transaction found a row changed under it, in a race it checks for itself (``matching.ClaimLost``):
    ``run_transaction`` runs it again, like a deadlock the database reports."""
