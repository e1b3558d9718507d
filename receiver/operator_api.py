"""What operators and their tools read: `/api/info` and Prometheus `/metrics`."""

from dataclasses import dataclass
from importlib.metadata import version

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from creditrelay.receiver.bearer import require_bearer
from creditrelay.receiver.metrics import exposition


@dataclass(frozen=True)
class OperatorService:
    database: str
    polling: bool
    admin: bool
    rate_limit: int | None
    ledger: CollectorRegistry
    enforcement: str = "off"
    alerts: bool = False
    metrics_token: str | None = None  # /metrics asks for it when set


def _service(request: Request) -> OperatorService:
    service: OperatorService = request.app.state.operator
    return service


async def info(request: Request) -> Response:
    service = _service(request)
    enabled = {
        "polling": service.polling,
        "creditApi": True,
        "admin": service.admin,
        "rateLimit": service.rate_limit,
        "enforcement": service.enforcement,
        "alerts": service.alerts,
    }
    body = {"name": "creditrelay", "version": version("creditrelay"), "database": service.database, "enabled": enabled}
    return JSONResponse({"success": True, "message": "", "data": body})


async def metrics(request: Request) -> Response:
    service = _service(request)
    if service.metrics_token is not None:
        require_bearer(request, service.metrics_token, "METRICS_TOKEN")
    text = await run_in_threadpool(exposition, service.ledger)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
