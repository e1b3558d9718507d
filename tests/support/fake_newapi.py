"""A stand-in for new-api's admin log API, following its real wire format (controller/log.go, model/log.go).

``GET /api/log/``: ``type`` filter, ``start_timestamp``/``end_timestamp`` inclusive, rows ``ORDER BY id
DESC``, ``p`` 1-based, ``page_size`` capped at 100 (``common.GetPageQuery``); answer
``{"success", "message", "data": {"page", "page_size", "total", "items"}}`` (rows and pages as
``scripts.gateway_log`` makes them, which `make chaos` serves too). Wrong credentials are refused
like new-api's auth middleware (401 with ``success: false``); ``refuse_with_200`` answers HTTP 200 with
``success: false``; ``down`` answers 502. Rows can be hidden, to be made visible later out of id order.

Access, as controller/token.go and controller/user.go answer it: ``PUT /api/token/?status_only=1``
changes only the status of one of the caller's *own* tokens (another account's token is refused with
HTTP 200 and ``success: false``); ``POST /api/user/manage`` enables or disables a user; ``GET
/api/token/:id`` and ``GET /api/user/:id`` read them back. ``access_502`` makes the next that many access
calls answer 502; ``access_delay`` makes each change of a token or user take that many seconds (a slow
gateway: the calls overlap, and ``most_in_flight`` says how many ever did at once).
"""

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scripts.gateway_log import consume_log_row, log_answer, log_page
from tests.support.database import Database
from tests.support.server import serving
from tests.support.signing import SECRET

ADMIN_TOKEN = "admin-access-token-for-tests"
ADMIN_USER = "1"


@dataclass
class FakeNewApi:
    rows: list[dict[str, Any]] = field(default_factory=list)
    hidden: set[int] = field(default_factory=set)
    down: bool = False
    refuse_with_200: bool = False
    fail_after: int | None = None  # answer this many log requests, then behave as down
    requests: int = 0
    url: str = ""
    tokens: dict[int, dict[str, int]] = field(default_factory=dict)  # id -> {"user_id", "status"}
    users: dict[int, int] = field(default_factory=dict)  # id -> status (1 enabled, 2 disabled)
    access_502: int = 0
    access_calls: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, id, status) as applied
    access_delay: float = 0.0
    role: int = 100  # the access token's account: 1 common, 10 admin, 100 root
    in_flight: int = 0
    most_in_flight: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def add(
        self,
        created_at: int,
        token_id: int,
        quota: int,
        request_id: str = "",
        *,
        hidden: bool = False,
        model: str = "gpt-4o",
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        user_id: int = int(ADMIN_USER),
    ) -> dict[str, Any]:
        row_id = next(self._ids)
        row = consume_log_row(
            row_id, created_at, token_id, quota, request_id, model=model,
            prompt_tokens=quota // 3 if prompt_tokens is None else prompt_tokens,
            completion_tokens=quota // 5 if completion_tokens is None else completion_tokens,
            user_id=user_id,
        )  # fmt: skip
        self.rows.append(row)
        if hidden:
            self.hidden.add(row_id)
        return row

    async def logs(self, request: Request) -> Response:
        if request.headers.get("authorization") != ADMIN_TOKEN or request.headers.get("new-api-user") != ADMIN_USER:
            return JSONResponse({"success": False, "message": "无权进行此操作，未登录且未提供 access token"}, 401)
        self.requests += 1
        if self.down or (self.fail_after is not None and self.requests > self.fail_after):
            return JSONResponse({"success": False, "message": "bad gateway"}, 502)
        if self.refuse_with_200:
            return JSONResponse({"success": False, "message": "数据库错误"})
        return log_answer(log_page([r for r in self.rows if r["id"] not in self.hidden], request.query_params))

    def token(self, token_id: int, owner: int = int(ADMIN_USER), status: int = 1) -> None:
        self.tokens[token_id] = {"user_id": owner, "status": status}

    def _refusal(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != ADMIN_TOKEN or request.headers.get("new-api-user") != ADMIN_USER:
            return JSONResponse({"success": False, "message": "无权进行此操作，未登录且未提供 access token"}, 401)
        if self.access_502 > 0:
            self.access_502 -= 1
            return JSONResponse({"success": False, "message": "bad gateway"}, 502)
        return None

    async def _slowly(self) -> None:
        """Take ``access_delay`` seconds, as a slow gateway does (other requests are served meanwhile)."""
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.access_delay)
        finally:
            self.in_flight -= 1

    async def update_token(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        await self._slowly()
        body = await request.json()
        token = self.tokens.get(int(body.get("id", 0)))
        if token is None or token["user_id"] != int(ADMIN_USER):  # model.GetTokenByIds(id, userId)
            return JSONResponse({"success": False, "message": "record not found"})
        if request.query_params.get("status_only") and body.get("status") in (1, 2):
            token["status"] = int(body["status"])
            self.access_calls.append(("token", int(body["id"]), token["status"]))
        return JSONResponse({"success": True, "message": "", "data": {"id": body["id"], "status": token["status"]}})

    async def get_token(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        token = self.tokens.get(int(request.path_params["token_id"]))
        if token is None or token["user_id"] != int(ADMIN_USER):
            return JSONResponse({"success": False, "message": "record not found"})
        return JSONResponse({"success": True, "message": "", "data": {"id": request.path_params["token_id"], **token}})

    async def manage_user(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        await self._slowly()
        body = await request.json()
        user_id, action = int(body.get("id", 0)), body.get("action")
        if user_id not in self.users:
            return JSONResponse({"success": False, "message": "用户不存在"})
        if action not in ("enable", "disable"):
            return JSONResponse({"success": False, "message": "无效的参数"})
        self.users[user_id] = 1 if action == "enable" else 2
        self.access_calls.append(("user", user_id, self.users[user_id]))
        return JSONResponse({"success": True, "message": "", "data": {"role": 1, "status": self.users[user_id]}})

    async def get_user(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        user_id = int(request.path_params["user_id"])
        if user_id not in self.users:
            return JSONResponse({"success": False, "message": "用户不存在"})
        return JSONResponse({"success": True, "message": "", "data": {"id": user_id, "status": self.users[user_id]}})

    async def own_account(self, request: Request) -> Response:
        """``GET /api/user/self`` (controller/user.go GetSelf): the access token's own account."""
        if request.headers.get("authorization") != ADMIN_TOKEN:
            return JSONResponse({"success": False, "message": "无权进行此操作，access token 无效"}, 401)
        # New-Api-User is ignored here, as new-api does since mid-2026: the answer says whose token it is
        account = {"id": int(ADMIN_USER), "username": "root", "role": self.role, "status": 1, "quota": 0}
        return JSONResponse({"success": True, "message": "", "data": account})

    async def status(self, _request: Request) -> Response:
        return JSONResponse({"success": True, "message": "", "data": {"quota_per_unit": 500000, "version": "v0.9"}})


@contextmanager
def fake_newapi() -> Iterator[FakeNewApi]:
    api = FakeNewApi()
    app = Starlette(
        routes=[
            Route("/api/log/", api.logs, methods=["GET"]),
            Route("/api/status", api.status, methods=["GET"]),
            Route("/api/user/self", api.own_account, methods=["GET"]),
            Route("/api/token/", api.update_token, methods=["PUT"]),
            Route("/api/token/{token_id:int}", api.get_token, methods=["GET"]),
            Route("/api/user/manage", api.manage_user, methods=["POST"]),
            Route("/api/user/{user_id:int}", api.get_user, methods=["GET"]),
        ]
    )
    with serving(app) as url:
        api.url = url
        yield api


def newapi_environment(database: Database, api: FakeNewApi) -> dict[str, str]:
    """The settings of a `creditrelay` process that polls (and enforces on) ``api``, on ``database``."""
    return {
        "DATABASE_URL": database.url.render_as_string(hide_password=False),
        "NEW_API_BASE_URL": api.url,
        "NEW_API_ADMIN_TOKEN": ADMIN_TOKEN,
        "NEW_API_USER_ID": ADMIN_USER,
        "WEBHOOK_SECRET": SECRET,
    }
