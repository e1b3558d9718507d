"""Work the receiver does besides answering requests: the polling loop when ``POLL_INTERVAL`` is set, and
whatever other workers it is given (the gateway enforcer, the alerts' relay), each an ``async`` function
of a stop event, all started with the app and stopped with it."""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import structlog
from starlette.applications import Starlette

from creditrelay.billing.polling import Poller
from creditrelay.receiver.metrics import POLL_PASSES
from creditrelay.schema.errors import DatabaseUnavailable, UpstreamError

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


Worker = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def every(interval: float, work: Callable[[], object], name: str) -> Worker:
    """A worker running ``work`` off the event loop every ``interval`` seconds; a failed pass is logged and
    the next one comes as usual."""

    async def loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(work)
            except Exception:  # an outage, a bug in one pass: never the end of the loop
                log.error(f"{name}_failed", exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                continue

    return loop


def background_lifespan(workers: Sequence[Worker]) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(worker(stop)) for worker in workers]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    return lifespan


def polling(poller: Poller, interval: float) -> Worker:
    return lambda stop: poll_forever(poller, interval, stop)
