"""A stand-in for LiteLLM's proxy key endpoints, following its real wire format
(``litellm/proxy/management_endpoints/key_management_endpoints.py``, v1.110).

``POST /key/block`` and ``POST /key/unblock`` with ``Authorization: Bearer <master key>`` and ``{"key": …}``:
the key may be the raw key (``sk-…``, looked up by its SHA-256) or that hash (64 hex characters); anything
else is ``400 Invalid key format.``, a key it does not hold ``404 Key not found.``, a wrong master key
``401``, a key without the admin role ``403`` (FastAPI's ``{"detail": …}``). The answer is the key's row
with ``blocked`` set. ``GET /key/info?key=…``: ``{"key", "info"}``, with no format check: a key it holds
neither live nor deleted is ``404 Key not found in database``; a deleted key is served from the archive
with ``"status": "deleted"``, a live one ``"active"`` or ``"blocked"``.
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
MEMBER_KEY = "sk-a-key-without-the-admin-role"  # authenticates, but may not block keys (403)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class FakeLiteLLM:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # hash -> the key's row
    calls: list[tuple[str, str]] = field(default_factory=list)  # (path, hash) of every change applied
    deleted: dict[str, dict[str, Any]] = field(default_factory=dict)  # hash -> a deleted key's archived row
    url: str = ""
    failing: str | None = None  # while set: /key/block and /key/unblock answer a 500 with this message

    def add_key(self, raw: str, alias: str | None = None) -> str:
        """A virtual key, as /key/generate would make it; its hash (what LiteLLM's callbacks report)."""
        token = hash_key(raw)
        self.keys[token] = {"token": token, "key_alias": alias, "blocked": None, "spend": 0.0, "max_budget": None}
        return token

    def delete_key(self, token: str) -> None:
        """/key/delete: the row moves to the archive (LiteLLM_DeletedVerificationToken)."""
        self.deleted[token] = self.keys.pop(token)


def _error(message: str, kind: str, param: str | None, code: int) -> Response:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": str(code)}}, code)


def _authorized(request: Request) -> bool:
    return request.headers.get("authorization", "") in (f"Bearer {MASTER_KEY}", f"Bearer {MEMBER_KEY}")


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
            if request.headers.get("authorization") == f"Bearer {MEMBER_KEY}":  # _check_key_admin_access
                detail = {"error": f"Only proxy admins, team admins, or org admins can call {request.url.path}."}
                return JSONResponse({"detail": detail}, 403)  # an HTTPException, as FastAPI renders it
            if fake.failing is not None:  # an exception in the endpoint, as LiteLLM's handler renders it
                return _error(fake.failing, "internal_server_error", "None", 500)
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
        key = request.query_params.get("key", "")
        token = hash_key(key) if key.startswith("sk-") else key  # hash_token_if_needed
        live, archived = fake.keys.get(token), fake.deleted.get(token)
        if live is None and archived is None:
            return _error("Key not found in database", "not_found_error", "key", 404)
        row = {k: v for k, v in (live or archived or {}).items() if k != "token"}
        row["status"] = "deleted" if live is None else ("blocked" if row.get("blocked") else "active")
        return JSONResponse({"key": key, "info": row})

    async def listing(request: Request) -> Response:
        """/key/list: a proxy admin sees every key, another caller its own (none here)."""
        if not _authorized(request):
            return _error("Authentication Error, Invalid proxy server token passed.", "auth_error", "None", 401)
        tokens = sorted(fake.keys) if request.headers.get("authorization") == f"Bearer {MASTER_KEY}" else []
        size = int(request.query_params.get("size") or 10)
        answer = {"keys": tokens[:size], "total_count": len(tokens), "current_page": 1, "total_pages": 1}
        return JSONResponse(answer)

    async def alive(_request: Request) -> Response:
        return JSONResponse("I'm alive!")

    routes = [
        Route("/health/liveliness", alive, methods=["GET"]),
        Route("/key/list", listing, methods=["GET"]),
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
