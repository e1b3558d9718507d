"""`make chaos` past one machine: several `creditrelay serve` instances on a MariaDB Galera cluster, and on
a PostgreSQL primary with a standby that is promoted when the primary dies.

``galera``: three nodes on loopback (state transfers by rsync), a `serve` on each; usages (half with
``requestId``, half seed 004's payload without) each posted to two instances at once and retried elsewhere
until one answers 200 (``scripts.balancer``); a node SIGKILLed after a share of them and restarted while
the load goes on (it rejoins by state transfer).

``failover``: a primary and a synchronous standby (``--async``: asynchronous), two `serve` instances given
both hosts (``target_session_attrs=read-write``); the primary SIGKILLed mid-load and the standby promoted
with ``pg_ctl promote``. Then the gateway's log (every usage sent) is served as new-api serves it, and
`creditrelay poll` and `creditrelay reconcile --fix` run: what the failover lost (only an asynchronous
standby loses anything) is charged then, once.

Each run asserts: zero 500s; every usage charged exactly once and every balance exact, on every node;
every instance healthy and charging again without a restart. It prints the figures (answers by status,
charges lost and recovered, each server's CPU per event) and exits non-zero when a check fails. Root only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from creditrelay.schema.database import make_engine
from creditrelay.schema.tables import usage_records, users
from scripts.balancer import Tally, Usage, in_background, make_usages, run_load, wait_for
from scripts.benchkit import OPENING, ledger_counts, make_database
from scripts.clusters import GaleraCluster, PostgresPair, missing_galera, missing_postgres
from scripts.gateway_log import serving_log
from scripts.processes import CREDITRELAY, free_port, start, stop, wait_healthy

SECRET = "cluster-chaos-secret-cluster-chaos-secret-0"  # noqa: S105 - a throwaway secret for local servers
GATEWAY_TOKEN = "cluster-chaos-gateway-token"  # noqa: S105 - the local gateway log's, nothing else
CONCURRENCY = 6  # usages in flight at once (each is two requests at first)


@contextmanager
def instances(urls: Sequence[str], work: Path) -> Iterator[list[str]]:
    """A `creditrelay serve` per database URL, each with a log of its own; their base URLs."""
    started, bases = [], []
    try:
        for number, url in enumerate(urls, start=1):
            port, log = free_port(), work / f"serve-{number}.log"
            process = start(["serve", "--port", str(port)], {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": url}, log)
            started.append(process)
            bases.append(f"http://127.0.0.1:{port}")
            wait_healthy(f"{bases[-1]}/api/webhooks/health", process, log, timeout=60)
        yield bases
    finally:
        for process in started:
            stop(process)


def recovered(bases: Sequence[str], usages: list[Usage], tally: Tally, work: Path, prefix: str) -> None:
    """Every instance healthy again, and each charges a usage of its own, answered by itself: recovery
    without a restart."""
    fresh = make_usages(f"{prefix}-after", len(bases), first=len(usages))
    for base, usage in zip(bases, fresh, strict=True):
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/api/webhooks/health", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"CHAOS CHECK FAILED: {base} still unhealthy two minutes on (logs in {work})")
            time.sleep(0.5)
        run_load([base], [usage], SECRET, tally, 1)
        usages.append(usage)


def check_ledger(url: str, usages: Sequence[Usage]) -> list[str]:
    """What is wrong with the ledger at ``url``: a usage charged twice or never, a balance off."""
    engine = make_engine(url)
    with engine.connect() as connection:
        found = Counter(
            (str(key), int(tokens), int(cost))
            for key, tokens, cost in connection.execute(
                sa.select(usage_records.c.remoteKeyId, usage_records.c.promptTokens, usage_records.c.creditCost)
            )
        )
        balances = {str(email): int(b) for email, b in connection.execute(sa.select(users.c.email, users.c.balance))}
        counts = ledger_counts(connection)
    engine.dispose()
    expected = Counter((str(u.key), u.prompt_tokens, u.cost) for u in usages)
    problems = []
    if twice := found - expected:
        problems.append(f"{sum(twice.values())} usage records beyond one per usage")
    if missing := expected - found:
        problems.append(f"{sum(missing.values())} usages not charged")
    spent: Counter[str] = Counter()
    for usage in usages:
        spent[f"bench{usage.key}@example.com"] += usage.cost
    off = [email for email, balance in balances.items() if OPENING - int(balance) != spent[email]]
    if off:
        problems.append(f"{len(off)} balances not opening minus their usages' cost (first: {off[0]})")
    if counts["off"] or counts["unpaired"]:
        problems.append(f"{counts['off']} balances not the sum of their transactions, {counts['unpaired']} unpaired")
    return problems


def statuses(tally: Tally) -> str:
    return ", ".join(f"{status}: {count}" for status, count in sorted(tally.statuses.items()))


def run_galera(work: Path, count: int, kill_after: int) -> str:
    cluster = GaleraCluster()
    cluster.start()
    try:
        make_database(cluster.nodes[0].url)
        cluster.wait_all_synced()
        usages = make_usages("galera", count)
        tally = Tally()
        victim = cluster.nodes[1]
        with instances([node.url for node in cluster.nodes], work) as bases:
            cpu_before, started = cluster.cpu_seconds(), time.monotonic()
            load = in_background(bases, usages, SECRET, tally, CONCURRENCY)
            wait_for(tally, kill_after, load)
            cluster.kill(victim)
            down_at = tally.done
            time.sleep(5)  # the cluster notices, and the load goes on without the node
            cluster.start_node(victim)  # rejoins by state transfer while the load goes on
            back_at = tally.done
            load.join()
            elapsed = time.monotonic() - started
            cpu = {n: cluster.cpu_seconds()[n] - cpu_before.get(n, 0.0) for n in (1, 3)}
            recovered(bases, usages, tally, work, "galera")
            cluster.wait_all_synced()
        problems = [f"node {node.number}: {p}" for node in cluster.nodes for p in check_ledger(node.url, usages)]
    finally:
        cluster.stop()
    if tally.statuses["500"]:
        problems.append(f"{tally.statuses['500']} answers were 500")
    report = (
        f"galera: {count} usages ({count // 2} with requestId) to 3 instances on 3 nodes in {elapsed:.0f} s, "
        f"node 2 SIGKILLed after {down_at} answered and back (state transfer) at {back_at}; answers: "
        f"{statuses(tally)}; {tally.retried} usages retried on another instance; charged once on every node; "
        f"CPU per usage on the nodes that stayed up: "
        + ", ".join(f"node {n} {1000 * seconds / count:.2f} ms" for n, seconds in cpu.items())
    )
    return _verdict(problems, report, work)


def run_failover(work: Path, count: int, kill_after: int, *, synchronous: bool, link_delay: float) -> str:
    pair = PostgresPair(synchronous=synchronous, link_delay=link_delay)
    pair.start()
    mode = "synchronous" if synchronous else "asynchronous"
    try:
        url = pair.url()
        make_database(url)
        usages = make_usages("sync" if synchronous else "async", count)
        tally = Tally()
        with instances([url, url], work) as bases:
            cpu_before, started = pair.cpu_seconds(pair.primary), time.monotonic()
            load = in_background(bases, usages, SECRET, tally, CONCURRENCY)
            wait_for(tally, kill_after, load)
            primary_cpu = pair.cpu_seconds(pair.primary) - cpu_before
            killed_at = tally.done
            pair.kill_primary()
            time.sleep(2)  # what noticing the death takes a failover manager, at least
            pair.promote()
            promoted_at = tally.done
            load.join()
            elapsed = time.monotonic() - started
            recovered(bases, usages, tally, work, "sync" if synchronous else "async")
        lost = _missing(url, usages)
        recovery = _recover_from_gateway_log(url, usages, work)
        problems = check_ledger(url, usages)
    finally:
        pair.stop()
    if tally.statuses["500"]:
        problems.append(f"{tally.statuses['500']} answers were 500")
    if synchronous and lost:
        problems.append(f"{len(lost)} usages answered 200 were lost with a synchronous standby")
    report = (
        f"failover ({mode} standby, {1000 * link_delay:.0f} ms away): {count} usages to 2 instances on a "
        f"multi-host URL in {elapsed:.0f} s; primary SIGKILLed after "
        f"{killed_at} answered, standby promoted at {promoted_at}; answers: {statuses(tally)}; "
        f"{tally.retried} usages retried on another instance; charges answered 200 and lost: {len(lost)}; "
        f"{recovery}; primary's CPU per usage before the kill: {1000 * primary_cpu / max(killed_at, 1):.2f} ms"
    )
    return _verdict(problems, report, work)


def _missing(url: str, usages: Sequence[Usage]) -> list[Usage]:
    engine = make_engine(url)
    with engine.connect() as connection:
        charged = {int(t) for (t,) in connection.execute(sa.select(usage_records.c.promptTokens))}
    engine.dispose()
    return [u for u in usages if u.prompt_tokens not in charged]


def _recover_from_gateway_log(url: str, usages: Sequence[Usage], work: Path) -> str:
    """Serve every usage as the gateway's consume log; `reconcile` says what the ledger lacks, `poll`
    charges it, `reconcile --fix` then finds nothing left to fix."""
    rows = [usage.log_row(row_id) for row_id, usage in enumerate(usages, start=1)]
    since, until = min(u.timestamp for u in usages) - 60, max(u.timestamp for u in usages) + 60
    window = ["--since", str(since), "--until", str(until), "--json"]
    with serving_log(rows, GATEWAY_TOKEN, "1") as gateway:
        env = {"DATABASE_URL": url, "WEBHOOK_SECRET": SECRET, "NEW_API_BASE_URL": gateway,
               "NEW_API_ADMIN_TOKEN": GATEWAY_TOKEN, "NEW_API_USER_ID": "1"}  # fmt: skip
        found = json.loads(_command(["reconcile", *window], env, work).stdout)
        polled = _command(["poll", "--since", str(since)], env, work)
        fixed = _command(["reconcile", *window, "--fix"], env, work)
    if fixed.returncode != 0:
        raise SystemExit(f"CHAOS CHECK FAILED: reconcile --fix still finds discrepancies:\n{fixed.stdout[-2000:]}")
    poll = json.loads(polled.stdout.strip().splitlines()[-1])
    report = json.loads(fixed.stdout)
    return (
        f"reconcile found {found['discrepancies']} discrepancies; poll charged {poll['charged']} from the "
        f"gateway's log (of {poll['rows']} rows: {poll['duplicates']} duplicates, {poll['matched']} matched to "
        f"their webhook); reconcile --fix then fixed {sum(report['fixed'].values())} and found "
        f"{report['discrepancies']} discrepancies"
    )


def _command(args: list[str], env: dict[str, str], work: Path) -> "subprocess.CompletedProcess[str]":
    environ = {k: v for k, v in os.environ.items() if k not in env} | env
    done = subprocess.run([CREDITRELAY, *args], env=environ, capture_output=True, text=True, check=False, cwd=work)
    with (work / "commands.log").open("a") as log:
        log.write(f"$ creditrelay {' '.join(args)}\n{done.stdout}{done.stderr}(exit {done.returncode})\n")
    return done


def _verdict(problems: list[str], report: str, work: Path) -> str:
    errors = sum(log.read_text().count('"unexpected_error"') for log in work.glob("serve-*.log"))
    if errors:
        problems.append(f"{errors} unexpected_error lines in the instances' logs")
    if problems:
        raise SystemExit("CHAOS CHECK FAILED: " + "; ".join(problems) + f"\n{report}\n(logs in {work})")
    return "exactly once, zero 500s: OK — " + report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["galera", "failover"])
    parser.add_argument("--async", dest="asynchronous", action="store_true", help="failover: asynchronous standby")
    parser.add_argument("--usages", type=int, help="default: galera 3000, failover 2000")
    parser.add_argument("--kill-after", type=int, help="usages answered before the kill (default: 30 %%)")
    parser.add_argument(
        "--link-delay", type=float, default=0.01, help="failover: seconds each way to the standby (default: 0.01)"
    )
    args = parser.parse_args()
    missing = missing_galera() if args.scenario == "galera" else missing_postgres()
    if missing is not None:
        print(f"cluster chaos ({args.scenario}) skipped: {missing}")
        return
    count = args.usages or (3000 if args.scenario == "galera" else 2000)
    kill_after = args.kill_after or count * 3 // 10
    work = Path(tempfile.mkdtemp(prefix=f"creditrelay-{args.scenario}-"))
    started = time.monotonic()
    if args.scenario == "galera":
        print(run_galera(work, count, kill_after))
    else:
        print(run_failover(work, count, kill_after, synchronous=not args.asynchronous, link_delay=args.link_delay))
    print(f"({time.monotonic() - started:.0f} s; logs in {work})")


if __name__ == "__main__":
    main()
