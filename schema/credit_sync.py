"""The credit API's wire format: the sync body, and the HMAC token that signs it.

A request names its member by exactly one of ``telegram_id`` (seeds 000/001), ``user_id`` (creditrelay's
own id) or ``email``. ``token`` = lowercase hex HMAC-SHA256 with the secret's UTF-8 bytes as key, of
either message, ``member`` being the identifier sent (the telegram id, the user id, or the email as sent):

- v1 (the original): ``f"{member}:{amount}:{source}:{timestamp}"``;
- v2: ``f"v2:{member}:{amount}:{source}:{timestamp}:{external_reference or ''}"``, which signs the
  reference too, so that a copy of a request cannot name another one.
- v3, the only one accepted for a top-up with grant terms (``expires_at``, ``priority``, ``kind``):
  ``f"v3:{telegram_id}:{amount}:{source}:{timestamp}:{external_reference or ''}:{expires_at}:{priority}:{kind}"``
  (an absent term as an empty field).

The server accepts either; no field says which. ``timestamp`` must be within ``TOKEN_WINDOW_SECONDS`` of the
server's clock. A token is used once (``billing.credit_tokens``).
"""

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from creditrelay.schema.errors import InvalidInput
from creditrelay.schema.money import MAX_AMOUNT
from creditrelay.schema.wire import BIGINT_MAX, MAX_TIMESTAMP, EnvelopeError, describe

TOKEN_WINDOW_SECONDS = 300
MAX_BATCH_ITEMS = 500

# What a client may do (``api_clients.rights``, comma-separated): read a member's balance; read the
# member's records — its own entries only (``sync`` ones with its source), or every entry; add credits (a
# positive amount); deduct them (a negative amount).
BALANCE, RECORDS, RECORDS_ALL, CREDIT, DEBIT = "balance", "records", "records:all", "credit", "debit"
RIGHTS = (BALANCE, RECORDS, RECORDS_ALL, CREDIT, DEBIT)  # in the order they are listed
DEFAULT_RIGHTS = (BALANCE, RECORDS, CREDIT, DEBIT)  # a new client's: everything but other clients' records


def parse_rights(names: str | Iterable[str]) -> tuple[str, ...]:
    """Right names — a comma-separated list, or several (spaces around a name ignored) — once each and in
    ``RIGHTS`` order; ``InvalidInput`` naming an unknown one."""
    items = [names] if isinstance(names, str) else names
    given = {name.strip() for item in items for name in item.split(",") if name.strip()}
    unknown = sorted(given.difference(RIGHTS))
    if unknown:
        named = f"right{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
        raise InvalidInput(f"unknown {named} (the rights are {', '.join(RIGHTS)})")
    return tuple(right for right in RIGHTS if right in given)


def right_to_change(amount: int) -> str:
    """The right a sync of ``amount`` needs."""
    return CREDIT if amount > 0 else DEBIT


def _hmac(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sync_token(secret: str, telegram_id: int | str, amount: int, source: str, timestamp: int) -> str:
    """The v1 token: the reference is not signed. ``telegram_id``: the member's identifier as sent (a
    telegram id, a user id or an email)."""
    return _hmac(secret, f"{telegram_id}:{amount}:{source}:{timestamp}")


def sync_token_v2(
    secret: str, telegram_id: int | str, amount: int, source: str, timestamp: int, external_reference: str | None
) -> str:
    """The v2 token: signs the reference too (none is signed as an empty one)."""
    return _hmac(secret, f"v2:{telegram_id}:{amount}:{source}:{timestamp}:{external_reference or ''}")


def sync_token_v3(
    secret: str,
    telegram_id: int | str,
    amount: int,
    source: str,
    timestamp: int,
    external_reference: str | None,
    grant: "GrantFields",
) -> str:
    """The v3 token, for a top-up with grant terms: signs the reference and the terms too."""
    expires, priority, kind = (("" if value is None else str(value)) for value in grant)
    message = f"v3:{telegram_id}:{amount}:{source}:{timestamp}:{external_reference or ''}:{expires}:{priority}:{kind}"
    return _hmac(secret, message)


GrantFields = tuple[int | None, int | None, str | None]  # expires_at (Unix seconds), priority, kind


def token_matches(secret: str, body: "SyncBody") -> bool:
    """Whether the body's token is its v1 or its v2 token (both compared, in constant time); a body with
    grant terms only by its v3 token, which signs them."""
    given = body.token.lower()
    member = body.member.value
    if body.grant != (None, None, None):
        v3 = sync_token_v3(
            secret, member, body.amount, body.source, body.timestamp, body.external_reference, body.grant
        )
        return hmac.compare_digest(v3, given)
    v1 = sync_token(secret, member, body.amount, body.source, body.timestamp)
    v2 = sync_token_v2(secret, member, body.amount, body.source, body.timestamp, body.external_reference)
    return hmac.compare_digest(v1, given) | hmac.compare_digest(v2, given)


IDENTIFIERS = ("telegram_id", "user_id", "email")
Email = Annotated[str, StringConstraints(min_length=3, max_length=191, pattern=r"^[^\s@]+@[^\s@]+$")]
Identifier = Annotated[int, Field(ge=1, le=BIGINT_MAX)]


@dataclass(frozen=True, slots=True)
class Member:
    """How a request names its member: ``field`` (one of ``IDENTIFIERS``) and its value as sent."""

    field: str
    value: int | str


ONE_MEMBER = "exactly one of telegram_id, user_id or email names the member"


def member_of(fields: Mapping[str, Any]) -> Member:
    """The one identifier ``fields`` holds; ``InvalidInput`` naming them unless exactly one is there."""
    given = [name for name in IDENTIFIERS if fields.get(name) is not None]
    if len(given) != 1:
        raise InvalidInput(ONE_MEMBER)
    return Member(given[0], fields[given[0]])


class NamedMember(BaseModel):
    """The member of a credit API body: exactly one of ``IDENTIFIERS`` (``sync``'s and a hold's)."""

    telegram_id: Identifier | None = None
    user_id: Identifier | None = None
    email: Email | None = None

    @model_validator(mode="after")
    def _one_member(self) -> Self:
        if sum(getattr(self, name) is not None for name in IDENTIFIERS) != 1:
            raise ValueError(ONE_MEMBER)
        return self

    @property
    def member(self) -> Member:
        return member_of(self.__dict__)


class SyncBody(NamedMember):
    """``POST /api/credits/sync`` (and each item of ``/batch``)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    amount: Annotated[int, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=48)]
    reason: Annotated[str, StringConstraints(max_length=255)]
    timestamp: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP)]
    token: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
    external_reference: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    # a top-up's grant terms (docs/grants-and-holds.md), signed by the v3 token
    expires_at: Annotated[int, Field(ge=1, le=MAX_TIMESTAMP)] | None = None
    priority: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    kind: Literal["paid", "promo"] | None = None

    @property
    def grant(self) -> GrantFields:
        return (self.expires_at, self.priority, self.kind)

    @model_validator(mode="after")
    def _terms_on_top_ups(self) -> "SyncBody":
        if self.amount < 0 and self.grant != (None, None, None):
            raise ValueError("expires_at, priority and kind are for a top-up (a positive amount) only")
        return self

    @field_validator("amount")
    @classmethod
    def _non_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be zero")
        return value


def parse_sync_body(value: Any, where: str = "") -> SyncBody:
    """A checked sync body, or ``EnvelopeError`` naming the field (prefixed with ``where``)."""
    if not isinstance(value, dict):
        raise EnvelopeError(f"{where or 'body'}: must be a JSON object")
    if sum(value.get(name) is not None for name in IDENTIFIERS) != 1:
        raise EnvelopeError(f"{where or 'body'}: {ONE_MEMBER}")
    try:
        return SyncBody.model_validate(value)
    except ValidationError as error:
        raise EnvelopeError(describe(error, where)) from None
