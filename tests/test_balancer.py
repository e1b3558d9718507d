"""scripts/balancer.py, the load balancer of the cluster chaos runs: each usage to two instances at once,
retried on the others until one answers 200, every answer counted — so a 500 cannot pass unseen."""

from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from creditrelay.receiver.app import create_app
from creditrelay.schema.database import make_engine
from creditrelay.schema.signing import parse_secrets
from creditrelay.settings import Settings
from scripts.balancer import Tally, make_usages, run_load
from scripts.benchkit import OPENING, make_database
from scripts.processes import free_port
from tests.support.server import serving

SECRET = "balancer-secret-balancer-secret-balancer-0"


def failing() -> Starlette:
    async def answer(_request: object) -> JSONResponse:
        return JSONResponse({"success": False, "message": "Internal error"}, 500)

    return Starlette(routes=[Route("/api/webhooks/events", answer, methods=["POST"])])


@pytest.mark.slow
def test_every_usage_is_answered_200_somewhere_and_every_500_is_counted(tmp_path: Path) -> None:
    """Instances: one receiver, one answering 500, one not listening. Every usage (half with requestId,
    half without) ends charged once, and the 500s and refusals it met on the way are in the tally."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    make_database(url)
    engine = make_engine(url)
    usages = make_usages("balanced", 20)
    tally = Tally()
    try:
        app = create_app(Settings(engine.url, parse_secrets(SECRET)), engine)
        with serving(app) as good, serving(failing()) as bad:
            run_load([good, bad, f"http://127.0.0.1:{free_port()}"], usages, SECRET, tally, concurrency=4)
        with engine.connect() as connection:
            charged = connection.exec_driver_sql("SELECT COUNT(*), SUM(creditCost) FROM usage_records").one()
            total = connection.exec_driver_sql("SELECT SUM(balance) FROM users").scalar()
    finally:
        engine.dispose()
    assert len(tally.answered) == 20
    assert tuple(charged) == (20, sum(u.cost for u in usages))
    assert total == 100 * OPENING - sum(u.cost for u in usages)
    assert tally.statuses["200"] == 20  # a usage is not sent again once some instance answered 200
    assert tally.statuses["500"] > 0
    assert tally.statuses["refused"] > 0
    assert tally.retried > 0
