"""`make bench`: creditrelay serve against the bare Starlette ceiling, on SQLite and MySQL, with wrk.

Prints events/s, p50/p99 latency, peak RSS and the ratio to the ceiling for unique events and for a
duplicate-heavy mix, checks the ledger for exactly-once after every run, and measures the seed's own
targets (server-side duplicate detection, deduction latency at moderate load). It prints figures and
asserts nothing about timing. Servers run pinned to CPU 0 and wrk to CPU 1 (both when there is one).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchkit import (
    Result,
    check_ledger,
    duplicate_detection_ms,
    make_database,
    run_load,
    serve,
    write_requests,
)

HERE = Path(__file__).resolve().parent
SECRET = "bench-secret-bench-secret-bench-secret-0123"  # noqa: S105 - a throwaway secret for local servers


def scenario(
    name: str,
    url: str,
    requests_file: Path,
    args: argparse.Namespace,
    *,
    workers: int = 1,
    connections: int | None = None,
) -> Result:
    """A fresh database, creditrelay serve on it under wrk, and the ledger checked afterwards."""
    make_database(url)
    env = {"DATABASE_URL": url, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "warning"}
    with serve(["serve", "--workers", str(workers)], env, cpu=args.server_cpu) as server:
        result = run_load(server, requests_file, args, connections=connections)
    result.name = name
    result.ledger = check_ledger(url, result, requests_file, min(args.threads, connections or args.connections))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--events", type=int, default=300_000, help="unique events prepared per run")
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("CREDITRELAY_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/creditrelay_bench"),
    )
    parser.add_argument("--skip-mysql", action="store_true")
    parser.add_argument("--server-cpu", default="0" if (os.cpu_count() or 1) > 1 else None)
    parser.add_argument("--load-cpu", default="1" if (os.cpu_count() or 1) > 1 else None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("make bench needs wrk (Debian: apt-get install wrk); `make bench` installs it")

    work = Path(tempfile.mkdtemp(prefix="creditrelay-bench-"))
    os.environ["CREDITRELAY_BENCH_LOG"] = str(work / "servers.log")
    unique = write_requests(work / "unique.tsv", "u", args.events, SECRET, duplicates=False)
    mixed = write_requests(work / "mixed.tsv", "m", args.events, SECRET, duplicates=True)
    results: list[Result] = []

    def measure_ceiling(when: str) -> Result:
        with serve(None, {"WEBHOOK_SECRET": SECRET}, cpu=args.server_cpu, ceiling=True) as server:
            result = run_load(server, unique, args)
        result.name = f"bare Starlette ceiling (HMAC only), {when}"
        return result

    # The machine's speed drifts over a run (a shared host); the ceiling is measured first and last and
    # every ratio is to the mean of the two.
    first = measure_ceiling("first")
    results.append(first)

    kinds = [("sqlite", f"sqlite:///{work / 'bench.db'}")] + ([] if args.skip_mysql else [("mysql", args.mysql_url)])
    for kind, url in kinds:
        for label, requests_file in (("unique events", unique), ("50% duplicates", mixed)):
            results.append(scenario(f"{kind}: {label}", url, requests_file, args))
        if kind == "mysql":
            results.append(scenario(f"{kind}: unique events, --workers 2", url, unique, args, workers=2))
        moderate = scenario(f"{kind}: moderate load (4 connections)", url, unique, args, connections=4)
        moderate.notes = f"duplicate detected server-side in {duplicate_detection_ms(url)}"
        results.append(moderate)

    last = measure_ceiling("last")
    results.append(last)
    ceiling = Result(rps=(first.rps + last.rps) / 2)

    print()
    header = f"{'run':44} {'events/s':>10} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7} {'non-200':>8}"
    print(header + "  exactly-once check")
    for r in results:
        ratio = r.rps / ceiling.rps if ceiling.rps else 0
        figures = f"{r.rps:10.0f} {ratio:7.1%} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rss_mb:7.0f} {r.non_200:8d}"
        print(f"{r.name:44} {figures}  {r.ledger}")
        if r.notes:
            print(f"{'':44} {r.notes}")
    print(
        f"\n(ratios to the mean ceiling, {ceiling.rps:.0f} requests/s; wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s; {time.strftime('%Y-%m-%d %H:%M')}; work dir {work})"
    )


if __name__ == "__main__":
    main()
