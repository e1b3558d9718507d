"""Where the CPU goes in one unpinned run of `serve` under wrk, and what a group-commit batch costs.

    .venv/bin/python scripts/unpinned_anatomy.py [--url mysql+pymysql://root@127.0.0.1:3306/cr_anatomy]
        [--writer process|thread] [--duration 10] [--connections 64]

One worker, unique events with ``requestId`` (what ``make bench`` sends), nothing pinned: the receiver,
its writer processes, the database server and wrk share the cores. Over the middle of the run it reads,
for each process, from /proc/<pid>/task/*/schedstat, the time its threads ran and the time they were
ready to run but waited for a core, and prints both as shares of a core beside the machine's idle share;
from the worker's /metrics at both ends of the same window, the events, the events per batch, the
milliseconds from a batch's hand-over to its answer and how many batches were in flight on average. Idle
CPU beside processes that wait for a core says the run waits on a chain of hand-offs, not on the cores'
capacity. Prints figures; asserts nothing. Linux only.
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


def sched_times() -> dict[int, tuple[str, int, int]]:
    """Every process's name, and the nanoseconds its live threads have run and have waited for a core."""
    times = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ran = waited = 0
            for task in Path(f"/proc/{entry}/task").iterdir():
                run_ns, wait_ns, _ = (task / "schedstat").read_text().split()
                ran, waited = ran + int(run_ns), waited + int(wait_ns)
        except (OSError, ValueError):
            continue
        times[int(entry)] = (stat[stat.index("(") + 1 : stat.rindex(")")], ran, waited)
    return times


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
        while batch_metrics(server.url)[0] == 0:  # wrk reads its requests file before it sends
            time.sleep(0.1)
        time.sleep(1)
        window = max(1.0, args.duration - 3)
        before, (idle0, total0), metrics0 = sched_times(), idle_ticks(), batch_metrics(server.url)
        time.sleep(window)
        after, (idle1, total1), metrics1 = sched_times(), idle_ticks(), batch_metrics(server.url)
        roles = {pid: role(pid, name, server.process.pid) for pid, (name, _, _) in after.items()}  # while they run
        load.join()
    events, batches, seconds = (end - start for start, end in zip(metrics0, metrics1, strict=True))
    rate = events / window
    [result] = done
    print(
        f"{args.writer} writer, {args.connections} connections: {rate:.0f} events/s over the window "
        f"(wrk: {result.rps:.0f} requests/s, p99 {result.p99_ms} ms, {result.non_200} not 200)"
    )
    ran: dict[str, float] = {}
    waited: dict[str, float] = {}
    for pid, (_, run_ns, wait_ns) in after.items():
        if pid in before:
            ran[roles[pid]] = ran.get(roles[pid], 0.0) + (run_ns - before[pid][1]) / 1e9 / window
            waited[roles[pid]] = waited.get(roles[pid], 0.0) + (wait_ns - before[pid][2]) / 1e9 / window
    print(f"  {'':26} {'ran':>16} {'per event':>10} {'waited for a core':>18}")
    for key in sorted(ran, key=lambda key: -ran[key]):
        if ran[key] >= 0.005:
            per_event = ran[key] / rate * 1e6 if rate else 0.0
            share, wait = ran[key] * 100, waited[key] * 100
            print(f"  {key:26} {share:5.0f} % of a core {per_event:7.0f} µs {wait:8.0f} % of a core")
    cpus = len(os.sched_getaffinity(0))
    print(f"  {'idle':26} {(idle1 - idle0) / (total1 - total0) * cpus * 100:5.0f} % of a core ({cpus} CPUs)")
    if batches:
        print(
            f"  batches: {events / batches:.1f} events each, {seconds / batches * 1000:.1f} ms from hand-over to "
            f"answer, {seconds / window:.1f} in flight on average"
        )


def batch_metrics(url: str) -> tuple[float, float, float]:
    """From the worker's /metrics: the events written in batches, the batches, and their seconds in all."""
    text = httpx.get(f"{url}/metrics").text

    def value(name: str) -> float:
        found = re.search(rf"^creditrelay_{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("batch_events_sum"), value("batch_commit_seconds_count"), value("batch_commit_seconds_sum")


if __name__ == "__main__":
    main()
