"""The OpenAPI document's holds: the gateway's (``/api/gateway/holds``) and the credit API's
(``/api/credits/holds``), described beside the rest by ``receiver.openapi``."""

from typing import Any

from creditrelay.receiver.openapi_parts import answers as _answers
from creditrelay.receiver.openapi_parts import body as _body
from creditrelay.schema.credit_holds import CaptureBody, HoldBody, VoidBody
from creditrelay.schema.holds import GatewayHoldBody

_NO_DEBIT = "The API key lacks the right `debit`"


def hold_paths(client: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The five operations on holds; ``client`` is the credit API's security requirement."""
    hold_id = {
        "name": "holdId", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}, "example": 7
    }  # fmt: skip
    return {
        "/api/gateway/holds": {
            "post": {
                "summary": "Hold credits before a request: 201 with holdId when available covers amount, else 200 "
                "allowed false",
                "security": [{"gatewayToken": []}],
                "requestBody": _body(GatewayHoldBody.model_json_schema()),
                "responses": _answers(200, 201, 400, 401, 403, 404, 409, 503, ok="Refused: not enough available"),
            }
        },
        "/api/gateway/holds/{holdId}": {
            "delete": {
                "summary": "Void a hold (a hold that ended is answered with its state)",
                "security": [{"gatewayToken": []}],
                "parameters": [hold_id],
                "responses": _answers(200, 400, 401, 403, 404, 503),
            }
        },
        "/api/credits/holds": {
            "post": {
                "summary": "Hold a member's credits (signed v2:hold:…); the same reference again is the same hold",
                "description": "Needs the right `debit`.",
                "security": client,
                "requestBody": _body(HoldBody.model_json_schema()),
                "responses": _answers(201, 400, 401, 402, 403, 404, 409, 429, 503, forbidden=_NO_DEBIT),
            }
        },
        "/api/credits/holds/{holdId}/capture": {
            "post": {
                "summary": "Charge at most the held amount, once; the rest is released (signed v2:capture:…)",
                "description": "Needs the right `debit`.",
                "security": client,
                "parameters": [hold_id],
                "requestBody": _body(CaptureBody.model_json_schema()),
                "responses": _answers(200, 400, 401, 403, 404, 409, 429, 503, forbidden=_NO_DEBIT),
            }
        },
        "/api/credits/holds/{holdId}/void": {
            "post": {
                "summary": "Release a hold (signed v2:void:…)",
                "description": "Needs the right `debit`.",
                "security": client,
                "parameters": [hold_id],
                "requestBody": _body(VoidBody.model_json_schema()),
                "responses": _answers(200, 400, 401, 403, 404, 409, 429, 503, forbidden=_NO_DEBIT),
            }
        },
    }
