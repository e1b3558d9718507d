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
from creditrelay.receiver.openapi_holds import hold_paths
from creditrelay.receiver.openapi_parts import (
    API_KEY_HEADER,
    SEED_EVENT,
    SIGNATURE_HEADERS,
    SYNC_ANSWER,
    SYNC_EXAMPLES,
    TAGS,
    answers,
    body,
    portal_paths,
    query,
    tag_operations,
)
from creditrelay.schema.credit_sync import SyncBody
from creditrelay.schema.wire import UsageData


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


_answers, _body, _query = answers, body, query


_NO_CHANGE = "The API key lacks the right `credit` (a positive amount) or `debit` (a negative one)"
_NO_RECORDS = "The API key has neither the right `records` nor `records:all`"
_MOMENT = {"type": "string", "description": "Unix seconds or an ISO-8601 time (UTC unless it says otherwise)"}


def document() -> dict[str, Any]:
    telegram = [
        {"name": "telegram_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1},
         "example": 123456789},
        API_KEY_HEADER,
    ]  # fmt: skip
    members = [
        _query("telegram_id", {"type": "integer", "minimum": 1}),
        _query("user_id", {"type": "integer", "minimum": 1}, 42),
        _query("email", {"type": "string"}),
        API_KEY_HEADER,
    ]
    one_of = " Names the member by exactly one of `telegram_id`, `user_id` or `email` (a 400 otherwise)."
    user_id = {
        "name": "user_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}, "example": 42
    }  # fmt: skip
    before = _query("before", {"type": "integer", "minimum": 1})
    webhook: list[dict[str, list[str]]] = [{"webhookSignature": []}, {"standardWebhooks": []}]
    client: list[dict[str, list[str]]] = [{"apiKey": []}]
    admin: list[dict[str, list[str]]] = [{"adminToken": []}]
    paths: dict[str, Any] = {
        "/api/webhooks/events": {
            "post": {
                "tags": ["webhooks"],
                "summary": "A signed usage event from the gateway (charged once)",
                "security": webhook,
                "parameters": SIGNATURE_HEADERS,
                "requestBody": _body(_event_schema(), SEED_EVENT),
                "responses": _answers(
                    200,
                    400,
                    401,
                    409,
                    413,
                    422,
                    503,
                    ok="Charged, duplicate, or ignored",
                    example={"success": True, "message": "Event processed successfully", "eventId": "test-001"},
                ),
            }
        },
        "/api/webhooks/batch": {
            "post": {
                "tags": ["webhooks"],
                "summary": "Up to 500 signed usage events in one request, each answered as /events would alone",
                "security": webhook,
                "parameters": SIGNATURE_HEADERS,
                "requestBody": _body(
                    {"type": "array", "minItems": 1, "maxItems": 500, "items": _event_schema()}, [SEED_EVENT]
                ),
                "responses": _answers(200, 400, 401, 413, 503, ok="One result per event, in order"),
            }
        },
        "/api/webhooks/health": {
            "get": {"tags": ["webhooks"], "summary": "Whether the database answers", "responses": _answers(200, 503)}
        },
        "/api/gateway/allowance/{remoteKeyId}": {
            "get": {
                "tags": ["gateway"],
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
        "/api/credits/sync": {
            "post": {
                "summary": "Add (positive amount) or deduct (negative) credits, once per external_reference; a token "
                "is used once (409 for a replay, whatever its external_reference)",
                "description": "Needs the right `credit` to add, `debit` to deduct. Names the member by exactly one "
                "of `telegram_id`, `user_id` or `email`; the token signs that identifier as sent.",
                "tags": ["credit API"],
                "security": client,
                "parameters": [API_KEY_HEADER],
                "requestBody": _body(SyncBody.model_json_schema(), examples=SYNC_EXAMPLES),
                "responses": _answers(
                    200, 400, 401, 402, 403, 404, 409, 429, 503, forbidden=_NO_CHANGE, example=SYNC_ANSWER
                ),
            }
        },
        "/api/credits/batch": {
            "post": {
                "summary": "Several syncs: each checked on its own, the valid ones applied in one transaction",
                "description": "Each item needs the right `credit` to add, `debit` to deduct; an item without it is "
                "answered 403 in its result.",
                "tags": ["credit API"],
                "security": client,
                "parameters": [API_KEY_HEADER],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": {"type": "array", "items": SyncBody.model_json_schema()}},
                    },
                    {"items": [example["value"] for example in SYNC_EXAMPLES.values()]},
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
        "/api/credits/balance": {
            "get": {
                "summary": "A member's credits, by Telegram id, user id or email",
                "description": "Needs the right `balance`." + one_of,
                "security": client,
                "parameters": members,
                "responses": _answers(
                    200,
                    400,
                    401,
                    403,
                    404,
                    429,
                    503,
                    forbidden="The API key lacks the right `balance`",
                    example={
                        "success": True,
                        "message": "",
                        "data": {"user_id": 42, "credits": 150, "nickname": "Ann"},
                    },
                ),
            }
        },
        "/api/credits/records": {
            "get": {
                "summary": "A member's balance changes, newest first, by Telegram id, user id or email",
                "description": "Needs the right `records` or `records:all`." + one_of,
                "security": client,
                "parameters": [*members, _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, 20)],
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
    paths |= portal_paths() | hold_paths(client)
    tag_operations(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "creditrelay",
            "version": "0.1.0",
            "description": "Usage webhooks, credit API, members' portal, admin API.",
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "securitySchemes": {
                "webhookSignature": {"type": "apiKey", "in": "header", "name": "X-Webhook-Signature"},
                "standardWebhooks": {"type": "apiKey", "in": "header", "name": "webhook-signature"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "adminToken": {"type": "http", "scheme": "bearer"},
                "gatewayToken": {"type": "http", "scheme": "bearer"},
                "portalToken": {"type": "http", "scheme": "bearer", "description": "the token of a portal link"},
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
