"""Signing for the tests, written independently of schema.signing (stdlib hmac, and the spec's library)."""

import hashlib
import hmac
import json
import time
from typing import Any

from standardwebhooks import Webhook

SECRET = "test-secret-key-that-is-long-enough-32"
OTHER_SECRET = "another-secret-key-also-long-enough-32"
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def seed_signature(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def seed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Webhook-Signature": seed_signature(body, secret)}


def standard_headers(
    body: bytes, msg_id: str, secret: str = STANDARD_SECRET, at: float | None = None
) -> dict[str, str]:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    signature = Webhook(secret).sign(msg_id, moment, body.decode())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
    }


def usage_event(
    event_id: str,
    cost: int = 15,
    key: int | str = 1,
    request_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "remoteKeyId": key,
        "model": "gpt-4",
        "promptTokens": 100,
        "completionTokens": 50,
        "totalTokens": 150,
        "creditCost": cost,
    }
    if request_id is not None:
        data["requestId"] = request_id
    return {"eventId": event_id, "eventType": "usage", "timestamp": 1702900800, "data": data, **extra}


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()
