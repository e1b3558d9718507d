"""The bare ceiling of the benchmark: read the body, verify its X-Webhook-Signature, answer. No storage.

Served by uvicorn with the same settings as ``creditrelay serve``, so the ratio between the two measures
what storing and billing an event costs on top of HTTP, routing and HMAC.
"""

import hashlib
import hmac
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SECRET = os.environ["WEBHOOK_SECRET"].split()[0].encode()


async def events(request: Request) -> Response:
    body = await request.body()
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-webhook-signature", "")):
        return JSONResponse({"success": False, "message": "Invalid webhook signature"}, status_code=401)
    return JSONResponse({"success": True, "message": "Event processed successfully"})


app = Starlette(routes=[Route("/api/webhooks/events", events, methods=["POST"])])
