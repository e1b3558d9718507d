"""`/openapi.json` and `/docs`: the public endpoints with their request and answer schemas.

Request schemas come from the pydantic models that validate the bodies (one source of truth); `/docs`
renders the document with Swagger UI 5 (which reads OpenAPI 3.1, the version pydantic's JSON Schemas are
written in) from the ``openapi-ui-bundles`` package — no CDN, works offline.
"""

from pathlib import Path
from typing import Any

import openapi_ui_bundles
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

from creditrelay.receiver.errors import ApiError
from creditrelay.schema.credit_holds import CaptureBody, HoldBody, VoidBody
from creditrelay.schema.credit_sync import SyncBody
from creditrelay.schema.holds import GatewayHoldBody
from creditrelay.schema.wire import UsageData

ANSWER = {
    "type": "object",
    "required": ["success", "message"],
    "properties": {"success": {"type": "boolean"}, "message": {"type": "string"}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _answers(*codes: int, ok: str = "Success", forbidden: str = "Disabled on this server") -> dict[str, Any]:
    described = {
        200: ok,
        201: "Created",
        202: ok,
        400: "Malformed request; the message names the field",
        401: "Missing or wrong credentials or signature",
        402: "Not enough credits",
        403: forbidden,
        404: "Not found",
        409: "Conflicts with an earlier request",
        413: "Body too large",
        422: "Valid but cannot be billed",
        429: "Rate limited",
        503: "Database unavailable; retry",
    }
    return {str(code): _json(ANSWER, described[code]) for code in codes}


def _event_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["eventId", "eventType", "timestamp"],
        "properties": {
            "eventId": {"type": "string", "minLength": 1, "maxLength": 64},
            "eventType": {"type": "string", "minLength": 1, "maxLength": 64},
            "timestamp": {"type": "integer", "minimum": 0},
            "data": UsageData.model_json_schema(),
        },
    }


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema}


_NO_CHANGE = "The API key lacks the right `credit` (a positive amount) or `debit` (a negative one)"
_NO_DEBIT = "The API key lacks the right `debit`"
_NO_RECORDS = "The API key has neither the right `records` nor `records:all`"
_MOMENT = {"type": "string", "description": "Unix seconds or an ISO-8601 time (UTC unless it says otherwise)"}


def document() -> dict[str, Any]:
    telegram = [{"name": "telegram_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}]
    user_id = {"name": "user_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
    hold_id = {"name": "holdId", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
    before = _query("before", {"type": "integer", "minimum": 1})
    webhook: list[dict[str, list[str]]] = [{"webhookSignature": []}, {"standardWebhooks": []}]
    client: list[dict[str, list[str]]] = [{"apiKey": []}]
    admin: list[dict[str, list[str]]] = [{"adminToken": []}]
    paths: dict[str, Any] = {
        "/api/webhooks/events": {
            "post": {
                "summary": "A signed usage event from the gateway (charged once)",
                "security": webhook,
                "requestBody": _body(_event_schema()),
                "responses": _answers(200, 400, 401, 409, 413, 422, 503, ok="Charged, duplicate, or ignored"),
            }
        },
        "/api/webhooks/batch": {
            "post": {
                "summary": "Up to 500 signed usage events in one request, each answered as /events would alone",
                "security": webhook,
                "requestBody": _body({"type": "array", "minItems": 1, "maxItems": 500, "items": _event_schema()}),
                "responses": _answers(200, 400, 401, 413, 503, ok="One result per event, in order"),
            }
        },
        "/api/webhooks/health": {"get": {"summary": "Whether the database answers", "responses": _answers(200, 503)}},
        "/api/gateway/allowance/{remoteKeyId}": {
            "get": {
                "summary": "May the gateway serve this key now (allowed, balance, suspended)",
                "security": [{"gatewayToken": []}],
                "parameters": [
                    {
                        "name": "remoteKeyId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "maxLength": 64},
                    }
                ],
                "responses": _answers(200, 400, 401, 403, 404, 503),
            }
        },
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
        "/api/credits/sync": {
            "post": {
                "summary": "Add (positive amount) or deduct (negative) credits, once per external_reference; a token "
                "is used once (409 for a replay, whatever its external_reference)",
                "description": "Needs the right `credit` to add, `debit` to deduct.",
                "security": client,
                "requestBody": _body(SyncBody.model_json_schema()),
                "responses": _answers(200, 400, 401, 402, 403, 404, 409, 429, 503, forbidden=_NO_CHANGE),
            }
        },
        "/api/credits/batch": {
            "post": {
                "summary": "Several syncs: each checked on its own, the valid ones applied in one transaction",
                "description": "Each item needs the right `credit` to add, `debit` to deduct; an item without it is "
                "answered 403 in its result.",
                "security": client,
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": {"type": "array", "items": SyncBody.model_json_schema()}},
                    }
                ),
                "responses": _answers(200, 400, 401, 429, 503),
            }
        },
        "/api/credits/balance/{telegram_id}": {
            "get": {
                "summary": "A user's credits",
                "description": "Needs the right `balance`.",
                "security": client,
                "parameters": telegram,
                "responses": _answers(
                    200, 400, 401, 403, 404, 429, 503, forbidden="The API key lacks the right `balance`"
                ),
            }
        },
        "/api/credits/records/{telegram_id}": {
            "get": {
                "summary": "A user's balance changes, newest first",
                "description": "Needs the right `records` (only this client's own syncs are listed) or `records:all` "
                "(every entry, other clients' and usage included).",
                "security": client,
                "parameters": [
                    *telegram,
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                ],
                "responses": _answers(200, 400, 401, 403, 404, 429, 503, forbidden=_NO_RECORDS),
            }
        },
        "/api/info": {"get": {"summary": "Version, database, what is enabled", "responses": _answers(200)}},
        "/api/admin/stats": {
            "get": {
                "summary": "The last hour's deliveries",
                "security": admin,
                "responses": _answers(200, 401, 403, 503),
            }
        },
        "/api/admin/users": {
            "get": {
                "summary": "Find users by email, Telegram id or gateway key",
                "security": admin,
                "parameters": [
                    _query("q", {"type": "string"}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                ],
                "responses": _answers(200, 400, 401, 403, 503),
            }
        },
        "/api/admin/users/{user_id}": {
            "get": {
                "summary": "A user, their keys and transactions newest first",
                "security": admin,
                "parameters": [user_id, _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}), before],
                "responses": _answers(200, 400, 401, 403, 404, 503),
            }
        },
        "/api/admin/users/{user_id}/topup": {
            "post": {
                "summary": "Add credits once per reference",
                "security": admin,
                "parameters": [user_id],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["amount", "reference"],
                        "properties": {
                            "amount": {"type": "integer", "minimum": 1},
                            "reference": {"type": "string", "minLength": 1, "maxLength": 128},
                            "reason": {"type": "string", "maxLength": 255},
                        },
                    }
                ),
                "responses": _answers(200, 400, 401, 403, 404, 409, 503),
            }
        },
        "/api/admin/webhook-logs": {
            "get": {
                "summary": "Webhook deliveries, newest first",
                "security": admin,
                "parameters": [
                    _query("status", {"enum": ["processed", "failed", "ignored"]}),
                    _query("since", _MOMENT),
                    _query("until", _MOMENT),
                    _query("key", {"type": "string", "minLength": 1, "maxLength": 64}),
                    _query("userId", {"type": "integer", "minimum": 1}),
                    _query("eventId", {"type": "string", "minLength": 1, "maxLength": 64}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                    before,
                    _query("after", {"type": "integer", "minimum": 0}),
                ],
                "responses": _answers(200, 400, 401, 403, 503),
            }
        },
        "/api/admin/webhook-logs/replay": {
            "post": {
                "summary": "Run a stored delivery through billing again (any event id, in the body)",
                "security": admin,
                "requestBody": _body(
                    {"type": "object", "required": ["eventId"], "properties": {"eventId": {"type": "string"}}}
                ),
                "responses": _answers(200, 400, 401, 403, 404, 503),
            }
        },
        "/api/admin/webhook-logs/{event_id}/replay": {
            "post": {
                "summary": "Run a stored delivery through billing again (its id URL-encoded)",
                "security": admin,
                "parameters": [{"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": _answers(200, 401, 403, 404, 503),
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "creditrelay", "version": "0.1.0", "description": "Usage webhooks, credit API, admin API."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "webhookSignature": {"type": "apiKey", "in": "header", "name": "X-Webhook-Signature"},
                "standardWebhooks": {"type": "apiKey", "in": "header", "name": "webhook-signature"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "adminToken": {"type": "http", "scheme": "bearer"},
                "gatewayToken": {"type": "http", "scheme": "bearer"},
            }
        },
    }


async def openapi_json(_request: Request) -> Response:
    return JSONResponse(document())


DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>creditrelay API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/start.js"></script>
</body></html>"""
# Swagger UI from the installed package, and only what this page loads: not the package's own index.html,
# which would have the operator's browser fetch petstore.swagger.io
_DOCS_FILES = {
    "swagger-ui.css": ("text/css", Path(openapi_ui_bundles.swagger_ui.static_path) / "swagger-ui.css"),
    "swagger-ui-bundle.js": (
        "text/javascript",
        Path(openapi_ui_bundles.swagger_ui.static_path) / "swagger-ui-bundle.js",
    ),
}
_START = b'SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});\n'
# scripts and data from here only (no inline script: the start is a file of ours), no framing
DOCS_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'none'"
)
DOCS_HEADERS = {
    "Content-Security-Policy": DOCS_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


async def docs(_request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE, headers=DOCS_HEADERS)


async def docs_file(request: Request) -> Response:
    """The two Swagger UI files the page loads, and its start script; nothing else of the package."""
    name = request.path_params["name"]
    if name == "start.js":
        return Response(_START, media_type="text/javascript", headers=DOCS_HEADERS)
    if name not in _DOCS_FILES:
        raise ApiError(404, "Not found")
    media_type, path = _DOCS_FILES[name]
    return FileResponse(path, media_type=media_type, headers=DOCS_HEADERS)
