"""Usage events as a gateway creates them: the event id is minted here, once, and never again."""

import json
import time
import uuid
from typing import Any


def mint_event_id() -> str:
    """A fresh, globally unique event id (36 characters)."""
    return f"evt_{uuid.uuid4().hex}"


def usage_event(
    *,
    remote_key_id: int | str,
    model: str,
    credit_cost: int,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    request_id: str | None = None,
    user_id: int | str | None = None,
    timestamp: int | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A usage event (docs/webhooks.md); keep the returned dict (and its ``eventId``) for every retry."""
    data: dict[str, Any] = {
        "remoteKeyId": remote_key_id,
        "model": model,
        "promptTokens": prompt_tokens,
        "completionTokens": completion_tokens,
        "totalTokens": prompt_tokens + completion_tokens,
        "creditCost": credit_cost,
    }
    if request_id is not None:
        data["requestId"] = request_id
    if user_id is not None:
        data["userId"] = user_id
    return {
        "eventId": event_id or mint_event_id(),
        "eventType": "usage",
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        "data": data,
    }


def encode_event(event: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent, on every attempt."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
