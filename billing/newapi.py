"""The upstream: new-api's admin log API, read-only, as its source defines it.

``GET /api/log/?type=2&p=…&page_size=…&start_timestamp=…&end_timestamp=…`` with ``Authorization`` and
``New-Api-User``; rows newest first (``id`` descending), ``p`` 1-based, ``page_size`` capped at 100,
both timestamps inclusive. A refusal may come back as HTTP 200 with ``"success": false``.
"""

import json
from dataclasses import dataclass
from typing import Any

import httpx

from schema.wire import MAX_TIMESTAMP

CONSUME = 2
PAGE_SIZE = 100


class UpstreamError(Exception):
    """new-api did not answer usefully (down, refused, or not the documented shape)."""


@dataclass(frozen=True)
class ConsumeLog:
    """One type-2 row of new-api's ``logs`` table."""

    id: int
    created_at: int
    user_id: int
    token_id: int
    token_name: str
    model_name: str
    quota: int
    prompt_tokens: int
    completion_tokens: int
    request_id: str
    raw: dict[str, Any]

    @property
    def request_key(self) -> str:
        """The usage's request id; rows without one are named by their log id."""
        return self.request_id or f"newapi-log-{self.id}"


@dataclass(frozen=True)
class LogPage:
    total: int
    items: list[ConsumeLog]


def _row(item: Any) -> ConsumeLog:
    if not isinstance(item, dict):
        raise UpstreamError("a log row is not an object")
    try:
        row = ConsumeLog(
            id=int(item["id"]),
            created_at=int(item["created_at"]),
            user_id=int(item.get("user_id") or 0),
            token_id=int(item.get("token_id") or 0),
            token_name=str(item.get("token_name") or ""),
            model_name=str(item.get("model_name") or ""),
            quota=int(item.get("quota") or 0),
            prompt_tokens=int(item.get("prompt_tokens") or 0),
            completion_tokens=int(item.get("completion_tokens") or 0),
            request_id=str(item.get("request_id") or ""),
            raw=item,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UpstreamError(f"log row not understood: {error!r}") from None
    numbers = (row.id, row.created_at, row.user_id, row.token_id, row.quota, row.prompt_tokens, row.completion_tokens)
    if any(not -(2**63) <= n < 2**63 for n in numbers) or not 0 <= row.created_at <= MAX_TIMESTAMP:
        raise UpstreamError(f"log row {str(item.get('id'))[:40]} has a number out of range")
    return row


class NewApiClient:
    def __init__(self, base_url: str, admin_token: str, user_id: str, *, timeout: float = 15.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": admin_token, "New-Api-User": user_id, "Accept": "application/json"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, params: dict[str, int] | None = None) -> Any:
        try:
            response = self.http.get(path, params=params)
        except httpx.TransportError as error:
            raise UpstreamError(f"new-api unreachable: {type(error).__name__}") from None
        if response.status_code != 200:
            raise UpstreamError(f"new-api answered HTTP {response.status_code}")
        try:
            answer = response.json()
        except json.JSONDecodeError:
            raise UpstreamError("new-api answered something that is not JSON") from None
        if not isinstance(answer, dict) or answer.get("success") is not True:
            message = answer.get("message") if isinstance(answer, dict) else None
            raise UpstreamError(f"new-api refused: {message or 'no message'}")
        return answer.get("data")

    def consume_logs(self, start: int, end: int, page: int, page_size: int = PAGE_SIZE) -> LogPage:
        """One page (1-based) of consume logs created in [start, end], newest first."""
        params = {"type": CONSUME, "p": page, "page_size": page_size, "start_timestamp": start, "end_timestamp": end}
        data = self._get("/api/log/", params)
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise UpstreamError("log page without data.items")
        return LogPage(int(data.get("total") or 0), [_row(item) for item in data["items"]])

    def quota_per_unit(self) -> int:
        data = self._get("/api/status")
        if not isinstance(data, dict) or "quota_per_unit" not in data:
            raise UpstreamError("status without data.quota_per_unit")
        return int(data["quota_per_unit"])
