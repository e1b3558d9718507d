"""Reading a request body within a size limit and a time limit, and checking it is declared as JSON.

These work on the ASGI ``receive`` and a case-insensitive header mapping (Starlette's ``Headers``), or on a
plain dict of lower-case names (``header_map``) where the webhook route runs without a ``Request``.
"""

import asyncio
from collections.abc import Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive, Scope

from creditrelay.receiver.errors import ApiError


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


class _Chunks:
    """A body arriving in pieces, kept as a list and joined once: adding each piece to the bytes read so far
    would copy them all again, quadratic in the number of pieces (a 4 MiB body in 1 KiB pieces, 8 GB
    copied)."""

    __slots__ = ("limit", "parts", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise ApiError(413, f"Body larger than {self.limit} bytes")
        if chunk:
            self.parts.append(chunk)

    def body(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The raw body from ASGI ``receive``, refused with 413 as soon as it is known to exceed ``limit``
    bytes."""
    _check_declared(headers, limit)
    chunks = _Chunks(limit)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.add(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks.body()


async def read_limited(request: Request, limit: int) -> bytes:
    """``read_body`` for a Starlette request (its stream, which knows whether the body was read before)."""
    _check_declared(request.headers, limit)
    chunks = _Chunks(limit)
    async for chunk in request.stream():
        chunks.add(chunk)
    return chunks.body()


def require_json(headers: Mapping[str, str]) -> None:
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(400, "Content-Type must be application/json")


class BodyDeadline:
    """A request's body must arrive within ``seconds`` of the first read, or the request is answered 408.

    One sweep per second cancels the reads that ran out of time, so a request costs a dictionary entry, not
    a timer of its own (which would be a noticeable share of the webhook route's time). Only a
    task waiting in ``receive`` is ever cancelled, and its cancellation becomes the 408 right there; a read
    that starts after the deadline is refused without waiting. Reads of an application that has its whole
    body are never watched (a route listening for a disconnect while it streams is not a slow body).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._reading: dict[asyncio.Task[object], _Read] = {}
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
            read = self._watch(task)
            if read.expired or task.get_loop().time() - read.started > self.seconds:
                raise self._timeout(task)
            read.waiting = True
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not read.expired:
                    raise
                task.uncancel()
                raise self._timeout(task) from None
            finally:
                read.waiting = False
            if message["type"] != "http.request" or not message.get("more_body", False):
                finished = True
                self._reading.pop(task, None)
            return message

        return bounded

    def _timeout(self, task: "asyncio.Task[object]") -> ApiError:
        self._reading.pop(task, None)
        return ApiError(408, f"Request body not received within {self.seconds:g} s")

    def _watch(self, task: "asyncio.Task[object]") -> "_Read":
        loop = task.get_loop()
        read = self._reading.get(task)
        if read is None:
            read = self._reading[task] = _Read(loop.time())
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())
        return read

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._reading:
            await asyncio.sleep(min(1.0, self.seconds / 4))
            now = loop.time()
            for task, read in list(self._reading.items()):
                if task.done():
                    del self._reading[task]
                elif read.waiting and not read.expired and now - read.started > self.seconds:
                    read.expired = True
                    task.cancel()


class _Read:
    """A request body being read: since when, whether the task is waiting in ``receive`` right now, and
    whether the sweep cancelled it for being late."""

    __slots__ = ("expired", "started", "waiting")

    def __init__(self, started: float) -> None:
        self.started = started
        self.waiting = False
        self.expired = False
