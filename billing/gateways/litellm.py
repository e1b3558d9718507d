"""The upstream: LiteLLM's proxy, as its source defines it (``litellm/proxy/management_endpoints/
key_management_endpoints.py``, v1.110).

``POST /key/block`` and ``POST /key/unblock`` with ``{"key": <the key, "sk-…", or its SHA-256 hash>}``
and ``Authorization: Bearer <master key>``: the key's row with ``blocked`` set, or an error
``{"error": {"message", "type", "param", "code"}}`` (400 for a key in neither form, 404 for one it does not
know, 401 for a wrong master key). ``GET /key/info?key=<hash>``: ``{"key", "info": {…, "blocked"}}``.
Every method raises ``UpstreamError`` for a refusal, an HTTP error or no answer.
"""

import re
from typing import Any

import httpx

from creditrelay.billing.gateways.answers import LITELLM, refused, unreachable
from creditrelay.schema.errors import UpstreamError

# what LiteLLM takes as a key (its is_valid_api_key): "sk-" and URL-safe characters, or a SHA-256 in hex
_KEY = re.compile(r"sk-[A-Za-z0-9_-]+|[a-fA-F0-9]{64}")


class LiteLLMClient:
    def __init__(self, base_url: str, master_key: str, *, timeout: float = 5.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {master_key}", "Accept": "application/json"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **options: Any) -> Any:
        try:
            response = self.http.request(method, path, **options)
        except httpx.TransportError as error:
            raise unreachable(LITELLM, self.http.base_url, error) from None
        try:
            answer = response.json()
        except (ValueError, RecursionError):
            answer = None
        if response.status_code != 200:
            message = _message(answer)
            # a 404 of LiteLLM's own (a key it does not know) says so; a route that is not there says only
            # "Not Found": the base URL is wrong
            if response.status_code in (401, 403) or (response.status_code == 404 and message in (None, "Not Found")):
                raise refused(LITELLM, response, message)
            raise UpstreamError(f"LiteLLM answered HTTP {response.status_code}: {(message or 'no message')[:200]}")
        if not isinstance(answer, dict):
            raise UpstreamError("LiteLLM answered something that is not a JSON object")
        return answer

    @staticmethod
    def _key(key: str) -> str:
        if not _KEY.fullmatch(key) or len(key) > 100:
            raise UpstreamError(
                "not a LiteLLM key or key hash (the gateway key must be user_api_key_hash: CREDITRELAY_KEY_FIELD)"
            )
        return key

    def set_key_enabled(self, key: str, enabled: bool) -> None:
        """Unblock (``enabled``) or block a virtual key: a blocked key's every request is refused."""
        self._call("POST", "/key/unblock" if enabled else "/key/block", json={"key": self._key(key)})

    def can_read_keys(self) -> int:
        """``GET /key/list`` (page 1, one key): whether the master key may read the proxy's keys; how many
        keys there are."""
        answer = self._call("GET", "/key/list", params={"page": 1, "size": 1})
        total = answer.get("total_count")
        return total if isinstance(total, int) else len(answer.get("keys") or [])

    def alive(self) -> None:
        """``GET /health/liveliness`` (no credentials): the proxy answers."""
        try:
            response = self.http.get("/health/liveliness")
        except httpx.TransportError as error:
            raise unreachable(LITELLM, self.http.base_url, error) from None
        if response.status_code != 200:
            raise refused(LITELLM, response)

    def key_enabled(self, key: str) -> bool:
        """Whether LiteLLM serves the key now (it is not blocked). A deleted key (LiteLLM describes it from
        its archive) is neither: an ``UpstreamError`` saying so."""
        answer = self._call("GET", "/key/info", params={"key": self._key(key)})
        info = answer.get("info")
        if not isinstance(info, dict) or not isinstance(info.get("blocked", False), bool | None):
            raise UpstreamError("key info without info.blocked")
        if info.get("status") == "deleted":
            raise UpstreamError("the key was deleted at LiteLLM (unlink it: creditrelay key unlink)")
        return not info.get("blocked")


def _message(answer: Any) -> str | None:
    """The words of a LiteLLM error: a ``ProxyException``'s ``{"error": {"message"}}``, or FastAPI's
    ``{"detail": …}`` of an ``HTTPException`` (its detail a string, or ``{"error": …}``)."""
    if not isinstance(answer, dict):
        return None
    for found in (answer.get("error"), answer.get("detail")):
        if isinstance(found, dict):
            found = found.get("message", found.get("error"))
            if isinstance(found, dict):
                found = found.get("message")
        if isinstance(found, str) and found:
            return found
    return None
