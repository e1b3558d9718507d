"""Where the CPU goes in one unpinned run of `serve` under wrk, and what a group-commit batch costs.

    .venv/bin/python scripts/unpinned_anatomy.py [--url mysql+pymysql://root@127.0.0.1:3306/cr_anatomy]
        [--writer process|thread] [--duration 10] [--connections 64]

One worker, unique events with ``requestId`` (what ``make bench`` sends), nothing pinned: the receiver,
its writer processes, the database server and wrk share the cores. Over the middle of the run it reads
each process's CPU time from /proc and prints each one's share of a core, and the machine's idle share;
from the worker's /metrics, the events per batch and the milliseconds from a batch's hand-over to its
answer. Idle CPU beside a flat rate says the run waits on a chain (a batch's round trips), not on the
cores. Prints figures; asserts nothing. Linux only.
"""

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchkit import Result, make_database, run_load, serve, write_requests

SECRET = "anatomy-secret-anatomy-secret-anatomy-secret-0"  # noqa: S105 - a throwaway secret for local servers
SERVERS = {"mariadbd": "database server", "mysqld": "database server", "postgres": "database server"}


def cpu_ticks() -> dict[int, tuple[str, int]]:
    """Every process's name and CPU time (user + system, in clock ticks)."""
    ticks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        ticks[int(entry)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def idle_ticks() -> tuple[int, int]:
    """The machine's idle and total CPU time so far (clock ticks, all CPUs)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def role(pid: int, name: str, worker: int) -> str:
    if pid == worker:
        return "worker (HTTP, the route)"
    if name in SERVERS:
        return SERVERS[name]
    if name == "wrk":
        return "wrk"
    try:
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return "writer processes"
    except OSError:
        pass
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="mysql+pymysql://root@127.0.0.1:3306/cr_anatomy")
    parser.add_argument("--writer", choices=["process", "thread"], default="process")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    args.threads, args.load_cpu = 2, None
    work = Path(tempfile.mkdtemp())
    requests = write_requests(work / "unique.tsv", "a", 40_000 * args.duration, SECRET, duplicates=False)
    url = args.url if not args.url.startswith("sqlite") else f"sqlite:///{work / 'anatomy.db'}"
    make_database(url)
    env = {"DATABASE_URL": url, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "warning", "WEBHOOK_WRITER": args.writer}
    with serve(["serve", "--workers", "1"], env, cpu=None) as server:
        done: list[Result] = []
        load = threading.Thread(target=lambda: done.append(run_load(server, requests, args, load_cpu=None)))
        load.start()
        time.sleep(2)
        window = max(1.0, args.duration - 4)
        before, (idle0, total0) = cpu_ticks(), idle_ticks()
        time.sleep(window)
        after, (idle1, total1) = cpu_ticks(), idle_ticks()
        roles = {pid: role(pid, name, server.process.pid) for pid, (name, _) in after.items()}  # while they run
        load.join()
        metrics = httpx.get(f"{server.url}/metrics").text
    shares: dict[str, float] = {}
    hertz = os.sysconf("SC_CLK_TCK")
    for pid, (_, ticks) in after.items():
        if pid in before and ticks > before[pid][1]:
            shares[roles[pid]] = shares.get(roles[pid], 0.0) + (ticks - before[pid][1]) / hertz / window * 100
    cpus = len(os.sched_getaffinity(0))
    [result] = done
    print(f"{args.writer} writer, {args.connections} connections: {result.rps:.0f} events/s, p99 {result.p99_ms} ms")
    for key, share in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {key:26} {share:4.0f} % of a core, {share / 100 / result.rps * 1e6:4.0f} µs per event")
    print(f"  {'idle':26} {(idle1 - idle0) / (total1 - total0) * cpus * 100:4.0f} % of a core ({cpus} CPUs)")

    def metric(name: str) -> float:
        return float(re.search(rf"^creditrelay_{name} (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]

    batches = metric("batch_commit_seconds_count")
    print(
        f"  batches: {metric('batch_events_sum') / batches:.1f} events each, "
        f"{metric('batch_commit_seconds_sum') / batches * 1000:.1f} ms from hand-over to answer"
    )


if __name__ == "__main__":
    main()
