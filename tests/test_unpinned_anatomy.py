"""scripts/unpinned_anatomy.py: each process of a run is counted under what it is, with its CPU from /proc."""

import multiprocessing
import os
import time

from scripts.unpinned_anatomy import idle_ticks, role, sched_times


def _spin_then_wait(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    time.sleep(60)


def test_a_spawned_child_counts_as_a_writer_process_with_the_cpu_it_used() -> None:
    """A child spawned as serve spawns its writers counts as one, with the CPU it burned; the worker is
    the pid given; database servers and wrk go by their names; the machine's idle is part of its total."""
    child = multiprocessing.get_context("spawn").Process(target=_spin_then_wait, args=(0.3,), daemon=True)
    child.start()
    try:
        assert child.pid is not None
        deadline = time.monotonic() + 30
        while (times := sched_times()).get(child.pid, ("", 0, 0))[1] == 0:  # the interpreter's start, the spin
            assert time.monotonic() < deadline, "the child used no CPU"
            time.sleep(0.1)
        name, _, _ = times[child.pid]
        assert role(child.pid, name, worker=os.getpid()) == "writer processes"
        own = times[os.getpid()][0]
        assert role(os.getpid(), own, worker=os.getpid()) == "worker (HTTP, the route)"
        assert role(os.getpid(), own, worker=0) == "other"
        assert role(os.getpid(), "mariadbd", worker=0) == "database server"
        assert role(os.getpid(), "postgres", worker=0) == "database server"
        assert role(os.getpid(), "wrk", worker=0) == "wrk"
    finally:
        child.kill()
        child.join()
    idle, total = idle_ticks()
    assert 0 <= idle < total
