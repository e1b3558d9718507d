"""Work the receiver does besides answering requests: the polling loop when ``POLL_INTERVAL`` is set."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
from starlette.applications import Starlette

from creditrelay.billing.polling import Poller
from creditrelay.receiver.metrics import POLL_PASSES
from creditrelay.schema.database import DatabaseUnavailable
from creditrelay.schema.errors import UpstreamError

log = structlog.get_logger()


async def poll_forever(poller: Poller, interval: float, stop: asyncio.Event) -> None:
    """One pass every ``interval`` seconds, off the event loop. A failed pass is logged, counted and tried
    again next time, whatever failed: nothing but ``stop`` ends the loop."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(poller.run_once)
            POLL_PASSES.labels("ok").inc()
        except (UpstreamError, DatabaseUnavailable) as error:
            POLL_PASSES.labels("failed").inc()
            log.error("poll_failed", error=str(error))
        except Exception:  # a bug or an answer nobody expected: the next pass, as for an outage
            POLL_PASSES.labels("failed").inc()
            log.error("poll_failed", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            continue


def polling_lifespan(poller: Poller, interval: float) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(poll_forever(poller, interval, stop))
        try:
            yield
        finally:
            stop.set()
            await task

    return lifespan
