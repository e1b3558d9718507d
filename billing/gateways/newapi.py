"""The upstream: new-api's admin API, as its source defines it.

The consume log: ``GET /api/log/?type=2&p=…&page_size=…&start_timestamp=…&end_timestamp=…`` with
``Authorization`` and ``New-Api-User``; rows newest first (``id`` descending), ``p`` 1-based,
``page_size`` capped at 100, both timestamps inclusive. Access: ``PUT /api/token/?status_only=1``
``{"id", "status": 1 | 2}`` for the admin account's own tokens, ``POST /api/user/manage`` ``{"id",
"action": "enable" | "disable"}`` for users. Any call may be refused as HTTP 200 with ``"success": false``:
every method raises ``UpstreamError`` for a refusal, an HTTP error or no answer.
"""

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from creditrelay.billing.gateways.answers import NEW_API, refused, unreachable
from creditrelay.schema.errors import UpstreamError
from creditrelay.schema.wire import MAX_TIMESTAMP

CONSUME = 2
PAGE_SIZE = 100


@dataclass(frozen=True)
class ConsumeLog:
    """One type-2 row of new-api's ``logs`` table. A row whose fields are not what new-api writes (a number
    that is not a whole 64-bit number, text that is not Unicode) is kept with ``problem`` saying so, and
    its unusable fields zero or empty: it is never charged, and never stops a pass."""

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
    other: dict[str, Any] = field(default_factory=dict)  # new-api's ``other``, a JSON object sent as a string
    problem: str | None = None

    @property
    def request_key(self) -> str:
        """The usage's request id (new-api's identity for it, where the row has one); rows without one, from
        before request ids, are named by their log id."""
        return self.request_id or f"newapi-log-{self.id}"


@dataclass(frozen=True)
class LogPage:
    total: int
    items: list[ConsumeLog]


_REQUIRED = ("id", "created_at")


def _number(item: dict[str, Any], name: str, problems: list[str]) -> int:
    value = item.get(name)
    if value is None and name not in _REQUIRED:
        return 0
    if type(value) is not int:
        problems.append(f"{name} is {str(value)[:40]!r}, not a whole number")
        return 0
    low, high = (0, MAX_TIMESTAMP) if name == "created_at" else (-(2**63), 2**63 - 1)
    if not low <= value <= high:
        problems.append(f"{name} {str(value)[:40]} is out of range")
        return 0
    return value


def _text(item: dict[str, Any], name: str, problems: list[str], *, stored: bool = False) -> str:
    """``item[name]`` as text ("" if absent or refused, with the problem said); a ``stored`` one (what a
    usage keeps) holds no NUL, which PostgreSQL cannot store: refused on every database (decision 0025)."""
    value = item.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(f"{name} is not text")
        return ""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        problems.append(f"{name} is not valid Unicode text")
        return ""
    if stored and "\x00" in value:
        problems.append(f"{name} holds a NUL character")
        return ""
    return value


def _other(item: dict[str, Any]) -> dict[str, Any]:
    value = item.get("other")
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) and value else {}
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _row(item: Any) -> ConsumeLog:
    if not isinstance(item, dict):
        raise UpstreamError("a log row is not an object")
    problems: list[str] = []

    def number(name: str) -> int:
        return _number(item, name, problems)

    def text(name: str, *, stored: bool = False) -> str:
        return _text(item, name, problems, stored=stored)

    return ConsumeLog(
        id=number("id"),
        created_at=number("created_at"),
        user_id=number("user_id"),
        token_id=number("token_id"),
        token_name=text("token_name"),
        model_name=text("model_name", stored=True),
        quota=number("quota"),
        prompt_tokens=number("prompt_tokens"),
        completion_tokens=number("completion_tokens"),
        request_id=text("request_id", stored=True),
        raw=item,
        other=_other(item),
        problem="; ".join(problems) or None,
    )


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
        return self._call("GET", path, params=params)

    def _call(self, method: str, path: str, **options: Any) -> Any:
        try:
            response = self.http.request(method, path, **options)
        except httpx.TransportError as error:
            raise unreachable(NEW_API, self.http.base_url, error) from None
        if response.status_code != 200:
            raise refused(NEW_API, response)
        try:
            answer = response.json()
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep, a number too long
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

    def status(self) -> dict[str, Any]:
        """``GET /api/status`` (no credentials): the instance's version, ``quota_per_unit`` and the rest."""
        data = self._get("/api/status")
        if not isinstance(data, dict):
            raise UpstreamError("status without data")
        return data

    def own_account(self) -> dict[str, Any]:
        """``GET /api/user/self``: the account the access token belongs to (``id``, ``username``, ``role``:
        1 common, 10 admin, 100 root)."""
        data = self._get("/api/user/self")
        if not isinstance(data, dict) or type(data.get("id")) is not int:
            raise UpstreamError("user/self without data.id")
        return data

    def quota_per_unit(self) -> int:
        data = self._get("/api/status")
        if not isinstance(data, dict) or "quota_per_unit" not in data:
            raise UpstreamError("status without data.quota_per_unit")
        return int(data["quota_per_unit"])

    def set_token_status(self, token_id: int, enabled: bool) -> None:
        """Enable or disable one of the admin account's own tokens (only the status changes)."""
        self._call(
            "PUT", "/api/token/", params={"status_only": 1}, json={"id": token_id, "status": 1 if enabled else 2}
        )

    def set_user_enabled(self, user_id: int, enabled: bool) -> None:
        """Enable or disable a new-api user (admin role): a disabled user's every key answers 403."""
        self._call("POST", "/api/user/manage", json={"id": user_id, "action": "enable" if enabled else "disable"})

    def token_enabled(self, token_id: int) -> bool:
        data = self._call("GET", f"/api/token/{token_id}")
        if not isinstance(data, dict) or not isinstance(data.get("status"), int):
            raise UpstreamError("token without data.status")
        return bool(data["status"] == 1)

    def user_enabled(self, user_id: int) -> bool:
        data = self._call("GET", f"/api/user/{user_id}")
        if not isinstance(data, dict) or not isinstance(data.get("status"), int):
            raise UpstreamError("user without data.status")
        return bool(data["status"] == 1)
