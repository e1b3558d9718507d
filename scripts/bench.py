"""`make bench`: creditrelay serve against the bare Starlette ceiling, on SQLite, MySQL and PostgreSQL,
with wrk.

Prints events/s, p50/p99 latency, peak RSS and the ratio to the ceiling for unique events and for a
duplicate-heavy mix, checks the ledger for exactly-once after every run, and measures the seed's own
targets (server-side duplicate detection, deduction latency at moderate load). Every run is repeated
(``--repeat``, interleaved rounds) and the table gives medians. It prints figures and asserts nothing
about timing. Servers run pinned to CPU 0 and wrk to CPU 1 (both when there is one).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchkit import ROOT as TREE
from scripts.benchkit import (
    Result,
    Summary,
    check_ledger,
    duplicate_detection_ms,
    make_database,
    run_load,
    serve,
    summarize,
    write_requests,
    writer_cost_us,
)
from scripts.dbcpu import server_cpu_seconds
from scripts.processes import revisions

HERE = Path(__file__).resolve().parent
SECRET = "bench-secret-bench-secret-bench-secret-0123"  # noqa: S105 - a throwaway secret for local servers


@dataclass(frozen=True)
class Plan:
    """One run of a round: which database, which requests, how many workers and connections."""

    name: str
    url: str
    requests_file: Path
    workers: int = 1
    connections: int | None = None  # None: --connections, full load, compared with the ceiling
    writer: str | None = None  # WEBHOOK_WRITER (None: serve's default, process)

    @property
    def full_load(self) -> bool:
        return self.connections is None


def scenario(plan: Plan, args: argparse.Namespace, *, pinned: bool = True, root: Path = TREE) -> Result:
    """A fresh database, creditrelay serve on it under wrk, and the ledger checked afterwards; the database
    server's CPU per event measured around the load. ``root``: another revision's checkout, whose own
    migrations make the database and whose own command line serves."""
    cpu, load_cpu = (args.server_cpu, args.load_cpu) if pinned else (None, None)
    if root == TREE:
        make_database(plan.url)
    else:
        code = "import sys; sys.path.insert(0, sys.argv[1]); import scripts.benchkit as k; k.make_database(sys.argv[2])"
        subprocess.run([sys.executable, "-c", code, str(root), plan.url], cwd=root, check=True, capture_output=True)
    env = {"DATABASE_URL": plan.url, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "warning"}
    if plan.writer is not None:
        env["WEBHOOK_WRITER"] = plan.writer
    with serve(["serve", "--workers", str(plan.workers)], env, cpu=cpu, root=root) as server:
        before = server_cpu_seconds(plan.url)
        result = run_load(server, plan.requests_file, args, connections=plan.connections, load_cpu=load_cpu)
        after = server_cpu_seconds(plan.url)
    if before is not None and after is not None and result.rps:
        result.db_cpu_us = (after - before) / (result.rps * args.duration) * 1e6
    result.name = plan.name
    threads = min(args.threads, plan.connections or args.connections)
    result.ledger = check_ledger(plan.url, result, plan.requests_file, threads)
    return result


def kinds(args: argparse.Namespace, work: Path) -> list[tuple[str, str]]:
    servers = [("mysql", args.mysql_url, args.skip_mysql), ("postgresql", args.postgres_url, args.skip_postgres)]
    return [("sqlite", f"sqlite:///{work / 'bench.db'}")] + [(kind, url) for kind, url, skip in servers if not skip]


def plans(args: argparse.Namespace, work: Path, unique: Path, mixed: Path) -> list[Plan]:
    runs = []
    for kind, url in kinds(args, work):
        runs += [Plan(f"{kind}: unique events", url, unique), Plan(f"{kind}: 50% duplicates", url, mixed)]
        if kind != "sqlite":  # a server takes two processes' writers
            runs.append(Plan(f"{kind}: unique events, --workers 2", url, unique, workers=2))
        runs.append(Plan(f"{kind}: moderate load (4 connections)", url, unique, connections=4))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every run; the table gives medians")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--events", type=int, default=300_000, help="unique events prepared per run")
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("CREDITRELAY_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/creditrelay_bench"),
    )
    parser.add_argument("--skip-mysql", action="store_true")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "CREDITRELAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/creditrelay_bench"
        ),
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--server-cpu", default="0" if (os.cpu_count() or 1) > 1 else None)
    parser.add_argument("--load-cpu", default="1" if (os.cpu_count() or 1) > 1 else None)
    parser.add_argument("--skip-instructions", action="store_true", help="no callgrind count (minutes of it)")
    parser.add_argument(
        "--unpinned-only", action="store_true", help="only the unpinned shares and the database server's CPU"
    )
    parser.add_argument("--ref", help="the unpinned runs of this git revision too, interleaved with this tree's")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("make bench needs wrk (Debian: apt-get install wrk); `make bench` installs it")

    work = Path(tempfile.mkdtemp(prefix="creditrelay-bench-"))
    os.environ["CREDITRELAY_BENCH_LOG"] = str(work / "servers.log")
    unique = write_requests(work / "unique.tsv", "u", args.events, SECRET, duplicates=False)
    mixed = write_requests(work / "mixed.tsv", "m", args.events, SECRET, duplicates=True)

    def measure_ceiling(pinned: bool = True) -> float:
        cpu, load_cpu = (args.server_cpu, args.load_cpu) if pinned else (None, None)
        with serve(None, {"WEBHOOK_SECRET": SECRET}, cpu=cpu, ceiling=True) as server:
            return run_load(server, unique, args, load_cpu=load_cpu).rps

    if args.unpinned_only:
        unpinned(args, work, unique, measure_ceiling)
        return
    # The host's speed drifts within minutes (a shared machine: 11k-26k requests/s for the same ceiling
    # a minute apart), so the ceiling is measured before the first run and after every run, each run's
    # ratio is to the mean of the two ceilings on either side of it, and the rounds interleave every run
    # so that a slow spell does not fall on one of them only.
    ceilings = [measure_ceiling()]
    rounds: dict[str, list[Result]] = {}
    for round_number in range(1, args.repeat + 1):
        for plan in plans(args, work, unique, mixed):
            result = scenario(plan, args)
            if not plan.full_load:
                result.duplicate_ms = duplicate_detection_ms(plan.url)
            ceilings.append(measure_ceiling())
            if plan.full_load:
                result.ceiling_rps = (ceilings[-2] + ceilings[-1]) / 2
            rounds.setdefault(plan.name, []).append(result)
            print(f"round {round_number}/{args.repeat}: {plan.name}: {result.rps:.0f} events/s", file=sys.stderr)
    report([summarize(results) for results in rounds.values()], ceilings, args)
    unpinned(args, work, unique, measure_ceiling)
    writer_alone(args, work, unique)
    if not args.skip_instructions:
        instructions()


def unpinned(args: argparse.Namespace, work: Path, unique: Path, measure_ceiling: Callable[[bool], float]) -> None:
    """The same unique-event runs with nothing pinned — the receiver, wrk and the database server share the
    cores as they do on a real host — against the ceiling measured the same way beside each: the share of
    the bare rate that counts the database server's own CPU too (pinned, it runs on the core wrk uses).
    This tree runs twice, its writer in a process of its own (serve's default) and on the worker's thread
    (``WEBHOOK_WRITER=thread``). With ``--ref``, that revision's runs interleave with this tree's, each
    beside a ceiling of its own."""
    with revisions(TREE, [args.ref] if args.ref else []) as roots:
        ceilings, shares = [measure_ceiling(False)], {}
        variants = [(name, root, None) for name, root in roots.items()] + [("thread", TREE, "thread")]
        for _ in range(args.repeat):
            for kind, url in kinds(args, work):
                for name, root, writer in variants:
                    plan = Plan(f"{kind}: unique events, unpinned", url, unique, writer=writer)
                    result = scenario(plan, args, pinned=False, root=root)
                    ceilings.append(measure_ceiling(False))
                    label = {"this tree": kind, "thread": f"{kind} WEBHOOK_WRITER=thread"}.get(name, f"{kind} {name}")
                    shares.setdefault(label, []).append((result.rps / ((ceilings[-2] + ceilings[-1]) / 2), result))
    width = max(map(len, shares))
    print("\nunpinned (receiver, wrk and database server share the cores), unique events, medians:")
    for kind, runs in shares.items():
        ratios = [ratio for ratio, _ in runs]
        cpu = [r.db_cpu_us for _, r in runs if r.db_cpu_us]
        rps = statistics.median(r.rps for _, r in runs)
        server = f", database server {statistics.median(cpu):.0f} µs CPU per event" if cpu else ""
        print(
            f"  {kind:{width}} {rps:7.0f} events/s, share of the bare rate {statistics.median(ratios):.2f}"
            f" ({min(ratios):.2f}-{max(ratios):.2f}){server}"
        )
    print(f"  unpinned ceiling {min(ceilings):.0f}-{max(ceilings):.0f} requests/s")


def instructions() -> None:
    """The writer's instructions per event under callgrind (scripts/writer_instructions.py): the figure the
    host's noise does not move."""
    from scripts.writer_instructions import ROOT as TREE
    from scripts.writer_instructions import per_event

    count = per_event(TREE, "with requestId")
    print(f"\nthe writer's instructions per event (callgrind, SQLite, batches of 32, with requestId): {count:,}")


def writer_alone(args: argparse.Namespace, work: Path, unique: Path) -> None:
    """The writer alone, in-process, batches of 32 unique events: with request ids (what the runs above
    send), as seed 004's payload without them (each kept open for matching with its log row), and without
    them while every user has a polled usage waiting for its webhook (each batch also looks for a pair).
    The variants interleave, ``--repeat`` rounds, medians."""
    variants = {
        "with requestId": {"request_ids": True},
        "no requestId, nothing polled": {"request_ids": False},
        "no requestId, polled usages open": {"request_ids": False, "polled": True},
    }
    print("\nthe writer alone, in-process, batches of 32 unique events (CPU / wall µs per event, medians):")
    for kind, url in kinds(args, work):
        costs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, options in variants.items():
                costs[name].append(writer_cost_us(url, unique, **options))
        base = statistics.median(cpu for cpu, _ in costs["with requestId"])
        for name, runs in costs.items():
            cpu, wall = statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs)
            print(f"  {kind:10} {name:34} {cpu:6.1f} / {wall:6.1f}   ({cpu / base:.2f}x the CPU with requestId)")


def report(summaries: list[Summary], ceilings: list[float], args: argparse.Namespace) -> None:
    print(
        f"\nmedians of {args.repeat} rounds (range: the lowest and highest round's ratio; p99 max: the worst round's)"
    )
    header = f"{'run':44} {'events/s':>9} {'ceiling':>8} {'ratio':>6} {'range':>12} {'p50 ms':>7} {'p99 ms':>7}"
    print(header + f" {'p99 max':>7} {'RSS MB':>6} {'non-200':>7}  exactly-once check")
    for s in summaries:
        ratio, spread = f"{'-':>6}", f"{'-':>12}"
        if s.ratio is not None and s.ratio_range is not None:
            ratio, spread = f"{s.ratio:6.1%}", f"{s.ratio_range[0]:5.1%}-{s.ratio_range[1]:5.1%}"
        ceiling = f"{s.ceiling_rps:8.0f}" if s.ceiling_rps else f"{'-':>8}"
        figures = f"{s.rps:9.0f} {ceiling} {ratio} {spread} {s.p50_ms:7.2f} {s.p99_ms:7.2f} {s.worst_p99_ms:7.2f}"
        figures += f" {s.rss_mb:6.0f}"
        print(f"{s.name:44} {figures} {s.non_200:7d}  {s.ledger}")
        if s.duplicate_ms is not None:
            p50, p99 = s.duplicate_ms
            print(f"{'':44} duplicate detected server-side: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        if s.db_cpu_us is not None:
            print(f"{'':44} the database server's CPU: {s.db_cpu_us:.0f} µs per event")
    print(
        f"\nceiling: the bare Starlette endpoint (HMAC only), measured {len(ceilings)} times, between the runs: "
        f"{min(ceilings):.0f}-{max(ceilings):.0f} requests/s (median {statistics.median(ceilings):.0f}); each "
        f"ratio is to the mean of the two measurements beside it.\n(wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s; {time.strftime('%Y-%m-%d %H:%M')})"
    )


if __name__ == "__main__":
    main()
