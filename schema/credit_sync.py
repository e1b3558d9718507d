"""The credit API's wire format: the sync body, and the HMAC token that signs it.

``token`` = lowercase hex HMAC-SHA256(secret, ``f"{telegram_id}:{amount}:{source}:{timestamp}"``) with the
secret's UTF-8 bytes as key; ``timestamp`` must be within ±300 s of the server's clock.
"""

import hashlib
import hmac
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from creditrelay.schema.money import MAX_AMOUNT
from creditrelay.schema.wire import BIGINT_MAX, MAX_TIMESTAMP, EnvelopeError, describe

TOKEN_WINDOW_SECONDS = 300
MAX_BATCH_ITEMS = 500


def sync_token(secret: str, telegram_id: int, amount: int, source: str, timestamp: int) -> str:
    message = f"{telegram_id}:{amount}:{source}:{timestamp}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def token_matches(secret: str, body: "SyncBody") -> bool:
    expected = sync_token(secret, body.telegram_id, body.amount, body.source, body.timestamp)
    return hmac.compare_digest(expected, body.token.lower())


class SyncBody(BaseModel):
    """``POST /api/credits/sync`` (and each item of ``/batch``)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    telegram_id: Annotated[int, Field(ge=1, le=BIGINT_MAX)]
    amount: Annotated[int, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=48)]
    reason: Annotated[str, StringConstraints(max_length=255)]
    timestamp: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP)]
    token: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
    external_reference: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None

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
    try:
        return SyncBody.model_validate(value)
    except ValidationError as error:
        raise EnvelopeError(describe(error, where)) from None
