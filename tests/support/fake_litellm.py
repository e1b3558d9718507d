"""A stand-in for LiteLLM's proxy key endpoints, following its real wire format
(``litellm/proxy/management_endpoints/key_management_endpoints.py``, v1.110).

``POST /key/block`` and ``POST /key/unblock`` with ``Authorization: Bearer <master key>`` and ``{"key": …}``:
the key may be the raw key (``sk-…``, looked up by its SHA-256) or that hash (64 hex characters); anything
else is ``400 Invalid key format.``, a key it does not hold ``404 Key not found.``, a wrong master key
``401``. The answer is the key's row with ``blocked`` set. ``GET /key/info?key=…``: ``{"key", "info"}``.
Errors are LiteLLM's ``ProxyException`` as its handler renders one: ``{"error": {"message", "type",
"param", "code"}}``.
"""

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.server import serving

MASTER_KEY = "sk-master-key-for-tests"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class FakeLiteLLM:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # hash -> the key's row
    calls: list[tuple[str, str]] = field(default_factory=list)  # (path, hash) of every change applied
    url: str = ""

    def add_key(self, raw: str, alias: str | None = None) -> str:
        """A virtual key, as /key/generate would make it; its hash (what LiteLLM's callbacks report)."""
        token = hash_key(raw)
        self.keys[token] = {"token": token, "key_alias": alias, "blocked": None, "spend": 0.0, "max_budget": None}
        return token


def _error(message: str, kind: str, param: str | None, code: int) -> Response:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": str(code)}}, code)


def _authorized(request: Request) -> bool:
    return request.headers.get("authorization", "") == f"Bearer {MASTER_KEY}"


def _lookup(fake: FakeLiteLLM, key: Any) -> tuple[str | None, Response | None]:
    if not isinstance(key, str) or not (
        3 <= len(key) <= 100 and (re.fullmatch(r"sk-[A-Za-z0-9_-]+", key) or re.fullmatch(r"[a-fA-F0-9]{64}", key))
    ):
        return None, _error("Invalid key format.", "bad_request_error", "key", 400)
    token = hash_key(key) if key.startswith("sk-") else key
    if token not in fake.keys:
        return None, _error("Key not found.", "not_found_error", "key", 404)
    return token, None


def _app(fake: FakeLiteLLM) -> Starlette:
    def changing(blocked: bool) -> Any:
        async def endpoint(request: Request) -> Response:
            if not _authorized(request):
                return _error("Authentication Error, Invalid proxy server token passed.", "auth_error", "None", 401)
            body = await request.json()
            token, refusal = _lookup(fake, body.get("key") if isinstance(body, dict) else None)
            if refusal is not None:
                return refusal
            assert token is not None
            fake.keys[token]["blocked"] = blocked
            fake.calls.append((request.url.path, token))
            return JSONResponse(fake.keys[token])

        return endpoint

    async def info(request: Request) -> Response:
        if not _authorized(request):
            return _error("Authentication Error, Invalid proxy server token passed.", "auth_error", "None", 401)
        token, refusal = _lookup(fake, request.query_params.get("key"))
        if refusal is not None:
            return refusal
        assert token is not None
        row = {k: v for k, v in fake.keys[token].items() if k != "token"}
        return JSONResponse({"key": request.query_params["key"], "info": row})

    routes = [
        Route("/key/block", changing(True), methods=["POST"]),
        Route("/key/unblock", changing(False), methods=["POST"]),
        Route("/key/info", info, methods=["GET"]),
    ]
    return Starlette(routes=routes)


@contextmanager
def fake_litellm() -> Iterator[FakeLiteLLM]:
    fake = FakeLiteLLM()
    with serving(_app(fake)) as url:
        fake.url = url
        yield fake
