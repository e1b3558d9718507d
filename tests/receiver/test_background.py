"""receiver/background.py: the poll loop of several instances on one ledger — the lease holder polls, and
another takes over when it stops."""

import asyncio
from collections.abc import Callable

from creditrelay.billing.polling import PollReport
from creditrelay.receiver.background import polling
from tests.support.database import Database


class CountingPoller:
    """A poller that counts its passes, each committing one slice (as ``billing.polling.Poller`` reports)."""

    def __init__(self, database: Database) -> None:
        self.engine = database.engine
        self.committed: Callable[[PollReport], None] | None = None
        self.passes = 0

    def run_once(self) -> PollReport:
        self.passes += 1
        report = PollReport(0, 0)
        if self.committed is not None:
            self.committed(report)
        return report


async def until(condition: Callable[[], bool], seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the time allowed")


def test_instances_on_one_ledger_poll_one_at_a_time_and_take_over(database: Database) -> None:
    """Two instances' poll loops: only the one holding the lease polls; when it stops (giving its lease up),
    the other takes over at its next look, without waiting for the lease to run out."""
    first, second = CountingPoller(database), CountingPoller(database)

    async def run() -> None:
        stop_first, stop_second = asyncio.Event(), asyncio.Event()
        first_loop = asyncio.create_task(polling(first, 0.01, "instance-1")(stop_first))  # type: ignore[arg-type]
        await until(lambda: first.passes >= 3)
        second_loop = asyncio.create_task(polling(second, 0.01, "instance-2")(stop_second))  # type: ignore[arg-type]
        await until(lambda: first.passes >= 10)
        assert second.passes == 0
        stop_first.set()
        await first_loop
        await until(lambda: second.passes >= 3)
        stop_second.set()
        await second_loop

    asyncio.run(run())
