"""What one connection may cost before a request exists: the HTTP protocol ``serve`` runs under uvicorn.

uvicorn's httptools protocol puts no bound on the request line and headers (it adds each piece of a URL to
the bytes before it: a 200 MB URL cost 45 s of CPU) and no time limit on them (a connection that never
sends, or sends a header line every few seconds, is kept forever). This protocol adds both:

- the request line and the headers together are at most ``HEAD_LIMIT`` bytes (431 past it);
- they arrive within ``HEAD_TIMEOUT`` seconds of the connection opening, or of the first byte of the next
  request on a kept-alive connection (408 and the connection closed past it); an idle kept-alive
  connection is closed after uvicorn's ``timeout_keep_alive``.

A malformed request is still answered 400 and closed, as uvicorn does, but logged at most once a minute
(``noisy``) with how many there were, so a client cannot fill the log with them.
"""

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from creditrelay.receiver.logs import Noisy

HEAD_LIMIT = 16 * 1024  # bytes of request line and headers; ours need a few hundred
MAX_CONNECTIONS = 1000  # per process, past which a new request is answered 503 (serve --max-connections)
HEAD_TIMEOUT = 10.0  # seconds for them to arrive
KEEP_ALIVE = 5.0  # seconds an idle kept-alive connection stays open (uvicorn's default)
LINGER = 1.0  # seconds a refused connection is read and dropped before it is closed

_malformed = Noisy("malformed_requests")


def _count_refusal(reason: str) -> None:
    # imported here: ``serve``'s supervisor process imports this module for its options, and must not
    # create metric files of its own beside its workers' (PROMETHEUS_MULTIPROC_DIR)
    from creditrelay.receiver.metrics import REFUSED_CONNECTIONS

    REFUSED_CONNECTIONS.labels(reason).inc()


class _HeadRefused(Exception):
    """The request's head broke a limit; its answer is written, the connection closing."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head's size and time bounded (see the module)."""

    _head_bytes = 0  # of the head being received (counted as it arrives, and again as the parser reports it)
    _in_head = True  # between requests or in one's head: what arrives is a head until its blank line
    _tail = b""  # the last bytes of the head so far, to find a blank line split between two reads
    _head_timer: asyncio.TimerHandle | None = None
    _answered = False  # refused and closing: what still arrives is read and dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return
        if self._in_head and self._head_arrived(data) > HEAD_LIMIT:
            self._too_large()
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeadRefused):
                return
            self._malformed()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            self._malformed()

    # The parser's callbacks run for every request: they call uvicorn's own by name, not through super(),
    # and count only a head that arrived behind another request's (in a head, data_received counted it).

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._start_head()

    def on_url(self, url: bytes) -> None:
        if not self._in_head:
            self._count(len(url))
        HttpToolsProtocol.on_url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            self._count(len(name) + len(value))
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self._stop_head()
        self._in_head, self._head_bytes, self._tail = False, 0, b""
        HttpToolsProtocol.on_headers_complete(self)

    def on_response_complete(self) -> None:
        # What comes next is the next request's head — unless the answer went out before the request's
        # body was all read (a 413): the rest of that body comes first, and the parser counts the next head
        self._in_head = self.cycle is None or not self.cycle.more_body
        HttpToolsProtocol.on_response_complete(self)

    def _head_arrived(self, data: bytes) -> int:
        """Count what of ``data`` belongs to the head (up to its blank line): the head's size so far. Counted
        before the parser sees it, which keeps a long header value whole until it ends."""
        seen = self._tail + data
        end = seen.find(b"\r\n\r\n")
        self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
        self._tail = seen[-3:]
        return self._head_bytes

    def _count(self, size: int) -> None:
        """The parser's count, for a head that arrived behind another request's (pipelined)."""
        self._head_bytes += size
        if self._head_bytes > HEAD_LIMIT:
            self._too_large()
            raise _HeadRefused

    def _too_large(self) -> None:
        _count_refusal("head_too_large")
        self._refuse(431, f"Request line and headers larger than {HEAD_LIMIT} bytes")

    def _start_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    def _stop_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            _count_refusal("head_too_slow")
            self._refuse(408, f"Request headers not received within {HEAD_TIMEOUT:g} s")

    def _malformed(self) -> None:
        _count_refusal("malformed")
        _malformed(client=self.client[0] if self.client else None)
        self._refuse(400, "Invalid HTTP request received.")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` in plain text and close the connection: our side at once, the whole of it a
        moment later — what the client is still sending is read and dropped meanwhile, so its system does
        not throw the answer away on a reset."""
        self._stop_head()
        if self.transport.is_closing() or self._answered:
            return
        self._answered = True
        reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = message.encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()


def server_options(max_connections: int = MAX_CONNECTIONS) -> dict[str, Any]:
    """uvicorn's options for ``serve`` (and for the tests' servers, so they run what operators run)."""
    return {
        "http": BoundedHttpToolsProtocol,
        "timeout_keep_alive": KEEP_ALIVE,
        "limit_concurrency": max_connections,
    }
