"""The credit API's holds on the wire (docs/credit-api.md#holds): the bodies of ``POST /api/credits/holds``,
``…/{id}/capture`` and ``…/{id}/void``, and the tokens that sign them — each a message of its own, so a
token of one kind of request never passes for another:

- hold: ``v2:hold:{member}:{amount}:{source}:{timestamp}:{reference}:{ttl}`` (``member``: the one identifier
  sent, ``telegram_id``, ``user_id`` or ``email``, as ``sync``'s token signs it)
- capture: ``v2:capture:{hold_id}:{amount}:{source}:{timestamp}``
- void: ``v2:void:{hold_id}:{source}:{timestamp}``

hex HMAC-SHA256 with the client's secret, as ``sync``'s token; used once.
"""

import hashlib
import hmac
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from creditrelay.schema.credit_sync import NamedMember
from creditrelay.schema.holds import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, M, parse_body
from creditrelay.schema.money import MAX_AMOUNT
from creditrelay.schema.wire import MAX_TIMESTAMP

Source = Annotated[str, StringConstraints(min_length=1, max_length=48)]
Timestamp = Annotated[int, Field(ge=0, le=MAX_TIMESTAMP)]
Token = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]


class _Signed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    source: Source
    timestamp: Timestamp
    token: Token


class HoldBody(_Signed, NamedMember):
    amount: Annotated[int, Field(ge=1, le=MAX_AMOUNT)]
    reference: Annotated[str, StringConstraints(min_length=1, max_length=128)]  # the same again: the same hold
    ttl: Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS)] = DEFAULT_TTL_SECONDS


class CaptureBody(_Signed):
    amount: Annotated[int, Field(ge=0, le=MAX_AMOUNT)]


class VoidBody(_Signed):
    pass


def _hmac(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def hold_token(
    secret: str, member: int | str, amount: int, source: str, timestamp: int, reference: str, ttl: int
) -> str:
    return _hmac(secret, f"v2:hold:{member}:{amount}:{source}:{timestamp}:{reference}:{ttl}")


def capture_token(secret: str, hold_id: int, amount: int, source: str, timestamp: int) -> str:
    return _hmac(secret, f"v2:capture:{hold_id}:{amount}:{source}:{timestamp}")


def void_token(secret: str, hold_id: int, source: str, timestamp: int) -> str:
    return _hmac(secret, f"v2:void:{hold_id}:{source}:{timestamp}")


def expected_token(secret: str, body: "HoldBody | CaptureBody | VoidBody", hold_id: int | None) -> str:
    """The token ``body`` must carry (``hold_id``: the path's, for capture and void)."""
    if isinstance(body, HoldBody):
        member = body.member.value
        return hold_token(secret, member, body.amount, body.source, body.timestamp, body.reference, body.ttl)
    assert hold_id is not None
    if isinstance(body, CaptureBody):
        return capture_token(secret, hold_id, body.amount, body.source, body.timestamp)
    return void_token(secret, hold_id, body.source, body.timestamp)


def parse_signed(model: type[M], value: Any) -> M:
    """A checked body, or ``EnvelopeError`` naming the field."""
    return parse_body(model, value)
