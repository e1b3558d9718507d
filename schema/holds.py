"""The wire format of credit holds (docs/grants-and-holds.md): the gateway's ``POST /api/gateway/holds``
body, checked strictly, every failure naming the field."""

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from creditrelay.schema.money import MAX_AMOUNT
from creditrelay.schema.wire import MAX_REQUEST_ID, EnvelopeError, RemoteKeyId, describe

DEFAULT_TTL_SECONDS = 600
MAX_TTL_SECONDS = 86_400  # a day


class GatewayHoldBody(BaseModel):
    """``{"remoteKeyId", "amount", "ttlSeconds"?, "requestId"?}``"""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    remoteKeyId: RemoteKeyId
    amount: Annotated[int, Field(ge=1, le=MAX_AMOUNT)]
    ttlSeconds: Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS)] = DEFAULT_TTL_SECONDS
    requestId: Annotated[str, StringConstraints(min_length=1, max_length=MAX_REQUEST_ID)] | None = None


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], value: Any) -> M:
    """A checked request body of ``model``, or ``EnvelopeError`` naming the field."""
    if not isinstance(value, dict):
        raise EnvelopeError("body: must be a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise EnvelopeError(describe(error)) from None


def parse_gateway_hold(value: Any) -> GatewayHoldBody:
    return parse_body(GatewayHoldBody, value)
