"""The pieces ``openapi.document`` is built of: answers whose examples say ``"success": false`` for every
refusal, the signature and key headers as parameters, real example payloads (seed 004's event, a signed
credit sync, a portal account), the tags the endpoints are grouped by, and the portal's operations."""

from typing import Any

from creditrelay.schema.credit_sync import sync_token_v2
from creditrelay.schema.packages import OrderBody

TAGS = [
    {"name": "webhooks", "description": "Usage events from the gateway, signed (docs/webhooks.md)"},
    {"name": "credit API", "description": "Other projects add and deduct credits, signed (docs/credit-api.md)"},
    {"name": "portal", "description": "A member's own account, with their portal link's token (docs/portal.md)"},
    {"name": "admin", "description": "The operator's API, with ADMIN_TOKEN (docs/operating.md)"},
    {
        "name": "gateway",
        "description": "What the gateway asks before serving, with GATEWAY_TOKEN (docs/enforcement.md)",
    },
]
ANSWER = {
    "type": "object",
    "required": ["success", "message"],
    "properties": {"success": {"type": "boolean"}, "message": {"type": "string"}},
}
DESCRIBED = {
    200: "Success",
    202: "Accepted",
    400: "Malformed request; the message names the field",
    401: "Missing or wrong credentials or signature",
    402: "Not enough credits",
    403: "Disabled on this server",
    404: "Not found",
    409: "Conflicts with an earlier request",
    413: "Body too large",
    422: "Valid but cannot be billed",
    429: "Rate limited",
    503: "Database unavailable; retry",
}
# what each refusal says, as the server says it (an example per status)
REFUSALS = {
    400: "amount: must not be zero",
    401: "Invalid webhook signature",
    402: "Insufficient credits",
    403: "This endpoint is off: set ADMIN_TOKEN",
    404: "Not found",
    409: "This token was already used: sign a new request",
    413: "Request body too large",
    422: "unknown remoteKeyId 1: no user has this gateway key (creditrelay key link 1 --user ...)",
    429: "Rate limit exceeded for this API key",
    503: "Database unavailable",
}

# seed 004's own event (its payload, signed with X-Webhook-Signature)
SEED_EVENT = {
    "eventId": "test-001",
    "eventType": "usage",
    "timestamp": 1702900800,
    "data": {
        "remoteKeyId": 1,
        "model": "gpt-4",
        "promptTokens": 100,
        "completionTokens": 50,
        "totalTokens": 150,
        "creditCost": 15,
    },
}
_STAMP = 1765000000
_SECRET = "the client's secret, from creditrelay client add"  # noqa: S105 - an example's placeholder, signs nothing


def _sync(field: str, value: int | str, reference: str) -> dict[str, Any]:
    return {
        field: value,
        "amount": 50,
        "source": "media_bot",
        "reason": "video refund",
        "timestamp": _STAMP,
        "token": sync_token_v2(_SECRET, value, 50, "media_bot", _STAMP, reference),
        "external_reference": reference,
    }


SYNC_EXAMPLES = {
    "by Telegram id": {"value": _sync("telegram_id", 123456789, "order-1001")},
    "by user id": {"value": _sync("user_id", 42, "order-1002")},
    "by email": {"value": _sync("email", "ann@example.com", "order-1003")},
}
SYNC_ANSWER = {
    "success": True,
    "message": "Credits updated",
    "data": {"telegram_id": 123456789, "balance": 150, "change": 50, "duplicate": False},
}
ACCOUNT = {
    "userId": 42,
    "email": "ann@example.com",
    "name": "Ann",
    "balance": 4334,
    "suspended": False,
    "suspendAt": 0,
    "low": False,
    "lowAt": 100,
    "firstMonth": "2026-11",
}
USAGE = {
    "from": "2026-11-07",
    "to": "2026-12-06",
    "groupBy": "model",
    "credits": 666,
    "tokens": 12000,
    "rows": [
        {"model": "gpt-4", "credits": 480, "tokens": 9000},
        {"model": "deepseek-chat", "credits": 186, "tokens": 3000},
    ],
}
TRANSACTIONS = {
    "transactions": [
        {
            "id": 981,
            "type": "usage",
            "amount": -15,
            "balance": 4334,
            "reference": "usage:evt:test-001",
            "reason": None,
            "source": "webhook",
            "createdAt": "2026-12-05T08:12:08Z",
            "usage": {"eventId": "test-001", "requestId": None, "model": "gpt-4"},
        },
        {
            "id": 17,
            "type": "topup",
            "amount": 5000,
            "balance": 4349,
            "reference": "topup:order-1001",
            "reason": None,
            "source": None,
            "createdAt": "2026-11-11T10:00:00Z",
            "usage": None,
        },
    ],
    "older": 17,
}


def json_answer(schema: dict[str, Any], description: str, example: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema, "example": example}}}


def answers(*codes: int, ok: str = "Success", forbidden: str | None = None, example: Any = None) -> dict[str, Any]:
    """Each code's answer; each refusal's example says ``"success": false`` and what the server says."""
    found = {}
    for code in codes:
        if code < 300:
            found[str(code)] = json_answer(ANSWER, ok, example or {"success": True, "message": ok})
        else:
            said = forbidden if code == 403 and forbidden else REFUSALS[code]
            described = forbidden if code == 403 and forbidden else DESCRIBED[code]
            found[str(code)] = json_answer(ANSWER, described, {"success": False, "message": said})
    return found


def body(schema: dict[str, Any], example: Any = None, examples: dict[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": schema}
    if examples is not None:
        content["examples"] = examples
    elif example is not None:
        content["example"] = example
    return {"required": True, "content": {"application/json": content}}


def query(name: str, schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    found = {"name": name, "in": "query", "schema": schema}
    return found if example is None else found | {"example": example}


def header(name: str, description: str, example: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
        "example": example,
    }


SIGNATURE_HEADERS = [
    header(
        "X-Webhook-Signature",
        "Lowercase hex HMAC-SHA256 of the raw body with WEBHOOK_SECRET (seed 004's scheme)",
        "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
    ),
    header(
        "webhook-id",
        "Standard Webhooks: the message id (instead of X-Webhook-Signature)",
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    ),
    header("webhook-timestamp", "Standard Webhooks: Unix seconds, within 300 s of the server's clock", "1702900800"),
    header(
        "webhook-signature",
        "Standard Webhooks: v1,<base64 HMAC-SHA256 of id.timestamp.body>",
        "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    ),
]
API_KEY_HEADER = header("X-Api-Key", "The client's API key (creditrelay client add)", "crk_8f3a…", required=True)
PORTAL_HEADER = header(
    "Authorization",
    "Bearer and the token of the member's portal link (the part after /portal/)",
    "Bearer 42.0.1767600000.LVtY7C6qiG_1ik3J27DqT5cB-P8Hg1z3kUVm16DK9tc",
    required=True,
)


ORDER = {
    "orderId": 7,
    "redirectUrl": "https://pay.example.com/submit.php?pid=1001&type=alipay&out_trade_no=20261206112055f1b14a478174"
    "&notify_url=…&return_url=…&name=pro&money=50.00&sign=…&sign_type=MD5",
    "outTradeNo": "20261206112055f1b14a478174",
}


def portal_paths() -> dict[str, Any]:
    """The member's portal: its JSON API, and its page and statement (HTML and CSV)."""
    security: list[dict[str, list[str]]] = [{"portalToken": []}]
    day = {"type": "string", "format": "date"}
    data = {"type": "object"}
    ok = {"type": "object", "properties": {"success": {"type": "boolean"}, "message": {"type": "string"}, "data": data}}

    def answer(example: Any) -> dict[str, Any]:
        return {
            "200": json_answer(ok, "Success", {"success": True, "message": "", "data": example}),
            **answers(400, 404, 503),
        }

    token = {
        "name": "token",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "example": "42.0.1767600000.LVtY7C6qiG_1ik3J27DqT5cB-P8Hg1z3kUVm16DK9tc",
    }
    return {
        "/api/portal/account": {
            "get": {
                "tags": ["portal"],
                "summary": "The member's balance and standing (suspended, low)",
                "security": security,
                "responses": answer(ACCOUNT),
            }
        },
        "/api/portal/usage": {
            "get": {
                "tags": ["portal"],
                "summary": "Credits and tokens charged, by day or by model, from and to (UTC days, "
                "both included; the last 30 days by default), dated by when they were charged",
                "security": security,
                "parameters": [
                    query("from", day, "2026-11-07"),
                    query("to", day, "2026-12-06"),
                    query("groupBy", {"enum": ["day", "model"]}, "model"),
                ],
                "responses": answer(USAGE),
            }
        },
        "/api/portal/transactions": {
            "get": {
                "tags": ["portal"],
                "summary": "The member's transactions, newest first; `older` is the next page's `before`",
                "security": security,
                "parameters": [
                    query("before", {"type": "integer", "minimum": 1}, 17),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, 50),
                ],
                "responses": answer(TRANSACTIONS),
            }
        },
        "/api/portal/orders": {
            "post": {
                "tags": ["portal"],
                "summary": "Buy a credit package: the order made, and where to send the member to pay "
                "(docs/payments.md); 503 when that provider is not configured",
                "security": security,
                "requestBody": body(
                    OrderBody.model_json_schema(), {"package": "pro", "provider": "epay", "type": "alipay"}
                ),
                "responses": {
                    "201": json_answer(ok, "The order, created", {"success": True, "message": "", "data": ORDER}),
                    **answers(400, 404, 503),
                },
            }
        },
        "/portal/{token}/statement.csv": {
            "get": {
                "tags": ["portal"],
                "summary": "A month's statement as CSV: opening balance, every transaction, closing",
                "parameters": [token, query("month", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}, "2026-11")],
                "responses": {
                    "200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                    **answers(400, 404),
                },
            }
        },
    }


_TAGGED = (("/api/webhooks", "webhooks"), ("/api/credits", "credit API"), ("/api/portal", "portal"),
           ("/portal", "portal"), ("/api/gateway", "gateway"))  # fmt: skip


_UNAUTHENTICATED = {
    "webhooks": "Invalid webhook signature",
    "credit API": "Invalid API key",
    "admin": "The ADMIN_TOKEN is required (Authorization: Bearer …)",
    "gateway": "The GATEWAY_TOKEN is required (Authorization: Bearer …)",
    "portal": "Not found",
}


def _tag(path: str) -> str:
    """The group an endpoint is listed under in /docs: its part of the API (the operator's by default)."""
    return next((tag for prefix, tag in _TAGGED if path.startswith(prefix)), "admin")


def tag_operations(paths: dict[str, Any]) -> None:
    """Each operation under its part of the API, its 401 (and the credit API's 404) saying what that part
    says."""
    for path, operations in paths.items():
        for operation in operations.values():
            operation.setdefault("tags", [_tag(path)])
            refused = operation["responses"].get("401")
            if refused is not None:  # what this part of the API says to a caller without credentials
                said = _UNAUTHENTICATED[operation["tags"][0]]
                refused["content"]["application/json"]["example"] = {"success": False, "message": said}
            unknown = operation["responses"].get("404")
            if unknown is not None and operation["tags"] == ["credit API"]:
                unknown["content"]["application/json"]["example"] = {"success": False, "message": "User not registered"}
