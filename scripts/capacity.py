"""Capacity for sizing a deployment: what one `creditrelay serve` instance charges per second, and what
each event costs the database server in CPU, on MariaDB, PostgreSQL and a three-node Galera cluster.

Each database is a server of this script's own (data directories under /var/tmp, ports of their own),
durable as installed; one `serve` (one worker) takes wrk's unique signed events at full load for
``--duration`` seconds. The database server's CPU per event is its processes' CPU time over the run
(threads, and PostgreSQL's backends, included) divided by the events charged; on Galera, each node's.
The connections the instance held at most are sampled during the run. Prints a table; root only.
"""

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from creditrelay.schema.database import make_engine
from creditrelay.schema.tables import usage_records
from scripts.benchkit import check_ledger, make_database, run_load, serve, write_requests
from scripts.clusters import (
    GaleraCluster,
    StandaloneMariaDB,
    StandalonePostgres,
    cpu_seconds,
    missing_galera,
    missing_postgres,
)

SECRET = "capacity-secret-capacity-secret-capacity-0"  # noqa: S105 - a throwaway secret for local servers


@dataclass
class Measured:
    name: str
    events: int
    seconds: float
    server_cpu: dict[str, float]  # CPU seconds of each database server process over the run
    creditrelay_cpu: float
    connections: int
    ledger: str

    def row(self) -> str:
        cpu = ", ".join(f"{name} {1000 * s / self.events:.2f}" for name, s in self.server_cpu.items())
        return (
            f"{self.name:26} {self.events / self.seconds:9.0f} {cpu:>32} "
            f"{1000 * self.creditrelay_cpu / self.events:14.2f} {self.connections:11d}  {self.ledger}"
        )


def connection_count(url: str) -> Callable[[], int]:
    """How many client connections the server holds now, not counting the one asking."""
    engine = make_engine(url)
    sql = (
        "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'THREADS_CONNECTED'"
        if engine.dialect.name == "mysql"
        else "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    )

    def count() -> int:
        with engine.connect() as connection:
            return int(connection.exec_driver_sql(sql).scalar() or 0) - 1

    return count


@contextmanager
def peak(sample: Callable[[], int]) -> Iterator[list[int]]:
    found = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            found[0] = max(found[0], sample())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        done.set()
        thread.join()


def measure(
    name: str, url: str, servers: Callable[[], dict[str, float]], args: argparse.Namespace, work: Path
) -> Measured:
    make_database(url)
    requests = write_requests(work / f"{name.split()[0]}.tsv", name.split()[0], args.events, SECRET, duplicates=False)
    load = SimpleNamespace(connections=args.connections, threads=2, duration=args.duration, load_cpu=None)
    env = {"DATABASE_URL": url, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "warning"}
    with serve(["serve", "--workers", "1"], env, cpu=None) as server, peak(connection_count(url)) as most:
        before, own = servers(), cpu_seconds(server.process.pid)
        started = time.monotonic()
        result = run_load(server, requests, load)
        seconds = time.monotonic() - started
        after, own = servers(), cpu_seconds(server.process.pid) - own
    engine = make_engine(url)
    with engine.connect() as connection:
        events = int(connection.execute(sa.select(sa.func.count()).select_from(usage_records)).scalar() or 0)
    engine.dispose()
    return Measured(name, events, seconds, {k: after[k] - before[k] for k in after}, own, most[0],
                    check_ledger(url, result, requests, 2))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per database")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--events", type=int, default=200_000, help="unique events prepared per database")
    parser.add_argument("--skip-galera", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("capacity needs wrk (Debian: apt-get install wrk)")
    if (reason := missing_postgres() or missing_galera()) is not None:
        sys.exit(f"capacity needs its own servers: {reason}")
    work = Path(tempfile.mkdtemp(prefix="creditrelay-capacity-"))
    os.environ["CREDITRELAY_BENCH_LOG"] = str(work / "servers.log")
    results = []
    mariadb = StandaloneMariaDB()
    mariadb.start()
    try:
        results.append(measure("MariaDB", mariadb.url, lambda: {"server": mariadb.cpu_seconds()}, args, work))
    finally:
        mariadb.stop()
    postgres = StandalonePostgres()
    postgres.start()
    try:
        results.append(measure("PostgreSQL", postgres.url, lambda: {"server": postgres.cpu_seconds()}, args, work))
    finally:
        postgres.stop()
    if not args.skip_galera:
        cluster = GaleraCluster()
        cluster.start()
        try:
            url = cluster.nodes[0].url.replace("creditrelay_chaos", "creditrelay_capacity")

            def nodes() -> dict[str, float]:
                return {f"node {n}": seconds for n, seconds in cluster.cpu_seconds().items()}

            results.append(measure("Galera (serve on node 1)", url, nodes, args, work))
        finally:
            cluster.stop()
    print(
        f"\none `creditrelay serve` (1 worker) at full load: wrk -c{args.connections} -d{args.duration}s, unique events"
    )
    print(f"{'database':26} {'events/s':>9} {'server CPU ms/event':>32} {'serve CPU ms':>14} {'connections':>11}")
    for measured in results:
        print(measured.row())
    print(f"({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs shared by every process above; logs in {work})")


if __name__ == "__main__":
    main()
