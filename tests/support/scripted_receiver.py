"""A stand-in receiver that answers from a script and remembers every request (for sender tests)."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.server import serving


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, object] | None = None


@dataclass
class ScriptedReceiver:
    """Answers ``script`` in order (then 200s)."""

    script: list[Reply] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: Request) -> Response:
        self.seen.append(Seen(dict(request.headers), await request.body()))
        reply = self.script.pop(0) if self.script else Reply()
        body = reply.body or {"success": 200 <= reply.status < 300, "message": f"scripted {reply.status}"}
        return JSONResponse(body, status_code=reply.status, headers=reply.headers)


@contextmanager
def scripted_receiver(*script: int | Reply, port: int = 0) -> Iterator[ScriptedReceiver]:
    receiver = ScriptedReceiver([s if isinstance(s, Reply) else Reply(s) for s in script])
    app = Starlette(routes=[Route("/api/webhooks/events", receiver.handle, methods=["POST"])])
    with serving(app, port) as base:
        receiver.url = f"{base}/api/webhooks/events"
        yield receiver
