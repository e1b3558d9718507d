"""Reading a request body within a size limit and a time limit, and checking it is declared as JSON.

These work on the ASGI ``receive`` and a case-insensitive header mapping (Starlette's ``Headers``), or on a
plain dict of lower-case names (``header_map``) where the webhook route runs without a ``Request``.
"""

import asyncio
from collections.abc import Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive, Scope

from receiver.errors import ApiError


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by name (ASGI servers lower-case names); of a repeated name, the first value,
    as Starlette's ``Headers.get`` gives."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


def _check_declared(headers: Mapping[str, str], limit: int) -> None:
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"Body larger than {limit} bytes")


def _grown(body: bytes, chunk: bytes, limit: int) -> bytes:
    body += chunk
    if len(body) > limit:
        raise ApiError(413, f"Body larger than {limit} bytes")
    return body


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The raw body from ASGI ``receive``, refused with 413 as soon as it is known to exceed ``limit``
    bytes."""
    _check_declared(headers, limit)
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body = _grown(body, message.get("body", b""), limit)
        if not message.get("more_body", False):
            return body


async def read_limited(request: Request, limit: int) -> bytes:
    """``read_body`` for a Starlette request (its stream, which knows whether the body was read before)."""
    _check_declared(request.headers, limit)
    body = b""
    async for chunk in request.stream():
        body = _grown(body, chunk, limit)
    return body


def require_json(headers: Mapping[str, str]) -> None:
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(400, "Content-Type must be application/json")


class BodyDeadline:
    """A request's body must arrive within ``seconds`` of the first read, or the request is answered 408.

    One sweep per second cancels the reads that ran out of time, so a request costs a dictionary entry, not
    a timer of its own (a timer per request cost ~4 µs on the webhook route, a tenth of its time). Reads of
    an application that has its whole body are never watched again (a route listening for a disconnect
    while it streams is not a slow body).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._reading: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def bound(self, receive: Receive) -> Receive:
        """``receive`` under the deadline."""
        finished = False

        async def bounded() -> Message:
            nonlocal finished
            if finished:
                return await receive()
            task = asyncio.current_task()
            assert task is not None
            self._watch(task)
            try:
                message = await receive()
            except asyncio.CancelledError:
                if task not in self._expired:
                    raise
                self._expired.discard(task)
                task.uncancel()
                raise ApiError(408, f"Request body not received within {self.seconds:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                finished = True
                self._reading.pop(task, None)
            return message

        return bounded

    def _watch(self, task: "asyncio.Task[object]") -> None:
        loop = task.get_loop()
        self._reading.setdefault(task, loop.time())
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._reading:
            await asyncio.sleep(min(1.0, self.seconds / 4))
            now = loop.time()
            for task, started in list(self._reading.items()):
                if task.done():
                    del self._reading[task]
                elif now - started > self.seconds and task not in self._expired:
                    del self._reading[task]
                    self._expired.add(task)
                    task.cancel()
