"""new-api's consume log as creditrelay reads it: rows as new-api writes them (model/log.go), and
``GET /api/log/`` filtered, ordered and paged as controller/log.go answers it (``type``,
``start_timestamp``/``end_timestamp`` inclusive, ``ORDER BY id DESC``, ``p`` 1-based, ``page_size`` capped
at 100).

The tests' fake new-api (tests/support/fake_newapi.py) builds and pages its rows with these functions;
`make chaos` serves the usages it sent through ``serving_log``, so that `creditrelay poll` and `reconcile
--fix` can charge what a failover lost.
"""

import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CONSUME = 2  # new-api's log type of a served request


def consume_log_row(
    row_id: int,
    created_at: int,
    token_id: int,
    quota: int,
    request_id: str = "",
    *,
    model: str = "gpt-4o",
    prompt_tokens: int,
    completion_tokens: int,
    user_id: int = 1,
) -> dict[str, Any]:
    """One consume log row as new-api returns it (``user_id``: the token's owner, a member or the admin)."""
    row = {
        "id": row_id,
        "user_id": user_id,
        "created_at": created_at,
        "type": CONSUME,
        "content": "模型倍率 1.00，分组倍率 1.00",  # noqa: RUF001 - new-api's own text, full-width comma included
        "username": "gateway-user",
        "token_name": f"token-{token_id}",
        "model_name": model,
        "quota": quota,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "use_time": 1,
        "is_stream": False,
        "channel": 1,
        "channel_name": "openai",
        "token_id": token_id,
        "group": "default",
        "ip": "",
        "other": json.dumps({"model_ratio": 1, "group_ratio": 1}),
    }
    if request_id:  # new-api omits an empty request_id (and rows from before v0.10 have none)
        row["request_id"] = request_id
    return row


def log_page(rows: Sequence[Mapping[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """The ``data`` of new-api's answer to ``GET /api/log/`` with ``query``, over ``rows``."""
    page = max(int(query.get("p") or 1), 1)
    size = int(query.get("page_size") or 10)
    size = 10 if size < 1 else min(size, 100)
    start, end = int(query.get("start_timestamp") or 0), int(query.get("end_timestamp") or 0)
    log_type = int(query.get("type") or 0)
    found = [
        r
        for r in rows
        if (log_type == 0 or r["type"] == log_type)
        and (start == 0 or r["created_at"] >= start)
        and (end == 0 or r["created_at"] <= end)
    ]
    found.sort(key=lambda r: r["id"], reverse=True)
    return {"page": page, "page_size": size, "total": len(found), "items": found[(page - 1) * size : page * size]}


def log_answer(data: Mapping[str, Any]) -> Response:
    body = json.dumps({"success": True, "message": "", "data": data})  # non-ASCII escaped: any text survives
    return Response(body, media_type="application/json")


@contextmanager
def serving_log(rows: Sequence[Mapping[str, Any]], token: str, user: str) -> Iterator[str]:
    """A new-api answering its consume log (``rows``) and status to ``token`` as ``user``, on a loopback
    port, until the block ends; its base URL."""

    async def logs(request: Request) -> Response:
        if request.headers.get("authorization") != token or request.headers.get("new-api-user") != user:
            refusal = "无权进行此操作，未登录且未提供 access token"  # noqa: RUF001 - new-api's own message
            return JSONResponse({"success": False, "message": refusal}, 401)
        return log_answer(log_page(rows, request.query_params))

    async def status(_request: Request) -> Response:
        return JSONResponse({"success": True, "message": "", "data": {"quota_per_unit": 500000, "version": "v0.9"}})

    app = Starlette(routes=[Route("/api/log/", logs), Route("/api/status", status)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
