"""`make bench`, the sender's half: events posted to the relay sidecar until every one is charged by
`creditrelay serve` (SQLite), beside the receiver's own single-event rate measured in the same run.

- **single**: the receiver alone, one signed event per request under wrk (what the sender is compared to).
- **accept**: the sidecar taking events in arrays of 100 and of 500 (durable before its 202), the receiver
  down, until ``--backlog`` events wait in the outbox.
- **backlog**: the receiver started; from its first charge to the last, how fast the relay drains.
- **end to end**: a fresh database and outbox, receiver up; ``--events`` posted in arrays of 100 from two
  clients; from the first post until every event is charged.

The relay's CPU per delivered event and its RSS (at the start and the end of the drain) are printed;
after each run every event is checked charged once, balances equal the sums of their transactions, and
the outbox holds nothing pending. Figures are printed, never asserted.

    .venv/bin/python scripts/relay_bench.py [--backlog 60000] [--events 20000]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from creditrelay.schema.database import make_engine
from creditrelay.schema.tables import outbox_events
from scripts.benchkit import CREDITRELAY, ROOT, USERS, ledger_counts, make_database, run_load, serve, write_requests
from scripts.processes import free_port

SECRET = "relay-bench-secret-relay-bench-secret-00"  # noqa: S105 - a throwaway benchmark secret
TICKS = os.sysconf("SC_CLK_TCK")


def event(prefix: str, index: int) -> bytes:
    return json.dumps(
        {
            "eventId": f"{prefix}-{index}",
            "eventType": "usage",
            "timestamp": 1_767_225_600 + index,
            "data": {"remoteKeyId": index % USERS, "model": "gpt-4o-mini", "promptTokens": 120,
                     "completionTokens": 80, "totalTokens": 200, "creditCost": 1 + index % 20,
                     "requestId": f"{prefix}-req-{index}"},
        },
        separators=(",", ":"),
    ).encode()  # fmt: skip


def post_arrays(relay: str, prefix: str, start: int, count: int, size: int, clients: int = 2) -> float:
    """POST ``count`` events in arrays of ``size`` from ``clients`` threads; the seconds it took."""
    arrays = [
        b"[" + b",".join(event(prefix, i) for i in range(at, min(at + size, start + count))) + b"]"
        for at in range(start, start + count, size)
    ]

    def send(part: list[bytes]) -> None:
        with httpx.Client(timeout=60) as client:
            for body in part:
                reply = client.post(f"{relay}/events", content=body, headers={"Content-Type": "application/json"})
                assert reply.status_code == 202, reply.text

    began = time.perf_counter()
    threads = [threading.Thread(target=send, args=(arrays[i::clients],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def charged(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT COUNT(*) FROM usage_records")).scalar_one())


def wait_charged(engine: sa.Engine, total: int, timeout: float = 1800) -> tuple[float, float]:
    """(when the first event was charged, when the last was), as perf_counter times."""
    first = None
    deadline = time.perf_counter() + timeout
    while True:
        done = charged(engine)
        now = time.perf_counter()
        if done and first is None:
            first = now
        if done >= total:
            return first or now, now
        if now > deadline:
            raise SystemExit(f"only {done} of {total} events charged in {timeout:.0f} s")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(found.group(1)) / 1024 if found else 0.0


@contextmanager
def relay(port: int, receiver_port: int, outbox: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv = [CREDITRELAY, "relay", "--listen", f"127.0.0.1:{port}", "--outbox", outbox,
            "--to", f"http://127.0.0.1:{receiver_port}/api/webhooks/events"]  # fmt: skip
    env = os.environ | {"WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "error"}
    with log.open("ab") as sink:
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=sink, stderr=sink)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the relay did not start: see {log}") from None
            time.sleep(0.1)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(20)


def exactly_once(url: str, outbox_url: str, total: int) -> str:
    ledger, box = make_engine(url), make_engine(outbox_url)
    with ledger.connect() as connection:
        counts = ledger_counts(connection)
        records, off = (counts["records"], counts["distinct"]), counts["off"]
    with box.connect() as connection:
        pending = connection.execute(
            sa.select(sa.func.count()).where(outbox_events.c.status != "delivered")
        ).scalar_one()
    problems = []
    if tuple(records) != (total, total):
        problems.append(f"{records[0]} usage records ({records[1]} distinct) for {total} events")
    if off:
        problems.append(f"{off} balances differ from their transactions")
    if pending:
        problems.append(f"{pending} events not delivered")
    return (
        "OK: each event charged once, balances = Σ transactions, outbox drained"
        if not problems
        else "FAILED: " + "; ".join(problems)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=60_000, help="events accepted while the receiver is down")
    parser.add_argument("--events", type=int, default=20_000, help="events sent end to end")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk for the single-event rate")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="creditrelay-relay-bench-"))
    log = work / "processes.log"
    os.environ["CREDITRELAY_BENCH_LOG"] = str(log)
    env = {"WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "warning"}
    wrk = SimpleNamespace(connections=64, threads=2, duration=args.duration, load_cpu=None)

    url = f"sqlite:///{work / 'single.db'}"
    make_database(url)
    requests = write_requests(work / "single.tsv", "s", 300_000, SECRET, duplicates=False)
    with serve(["serve"], env | {"DATABASE_URL": url}, cpu=None) as server:
        single = run_load(server, requests, wrk).rps
    print(f"receiver alone, one event per request (wrk -c64, {args.duration} s): {single:.0f} events/s")

    url = f"sqlite:///{work / 'backlog.db'}"
    outbox = f"sqlite:///{work / 'backlog-outbox.db'}"
    make_database(url)
    receiver_port, relay_port = free_port(), free_port()
    with relay(relay_port, receiver_port, outbox, log) as process:
        half = args.backlog // 2
        took_100 = post_arrays(f"http://127.0.0.1:{relay_port}", "b", 0, half, 100)
        took_500 = post_arrays(f"http://127.0.0.1:{relay_port}", "b", half, args.backlog - half, 500)
        print(f"sidecar accepts, receiver down: arrays of 100 {half / took_100:.0f} events/s, "
              f"arrays of 500 {(args.backlog - half) / took_500:.0f} events/s")  # fmt: skip
        before, rss_before = cpu_seconds(process.pid), rss_mb(process.pid)
        started = time.perf_counter()
        with serve(["serve"], env | {"DATABASE_URL": url}, cpu=None, port=receiver_port):
            first, last = wait_charged(sa.create_engine(url), args.backlog)
            spent, rss_after = cpu_seconds(process.pid) - before, rss_mb(process.pid)
        drain = args.backlog / (last - first)
    print(f"backlog of {args.backlog}: drained at {drain:.0f} events/s ({drain / single:.2f}x the single-event rate), "
          f"after {first - started:.1f} s waiting for the relay's next probe; "
          f"relay CPU {spent / args.backlog * 1e6:.0f} µs per event, "
          f"RSS {rss_before:.0f} -> {rss_after:.0f} MB")  # fmt: skip
    print(f"  {exactly_once(url, outbox, args.backlog)}")

    url = f"sqlite:///{work / 'e2e.db'}"
    outbox = f"sqlite:///{work / 'e2e-outbox.db'}"
    make_database(url)
    receiver_port, relay_port = free_port(), free_port()
    with (
        serve(["serve"], env | {"DATABASE_URL": url}, cpu=None, port=receiver_port),
        relay(relay_port, receiver_port, outbox, log) as process,
    ):
        before, rss_before = cpu_seconds(process.pid), rss_mb(process.pid)
        began = time.perf_counter()
        post_arrays(f"http://127.0.0.1:{relay_port}", "e", 0, args.events, 100)
        _, last = wait_charged(sa.create_engine(url), args.events)
        spent, rss_after = cpu_seconds(process.pid) - before, rss_mb(process.pid)
    rate = args.events / (last - began)
    print(f"end to end, {args.events} events in arrays of 100 until all charged: {rate:.0f} events/s "
          f"({rate / single:.2f}x the single-event rate); relay CPU {spent / args.events * 1e6:.0f} µs per event, "
          f"RSS {rss_before:.0f} -> {rss_after:.0f} MB")  # fmt: skip
    print(f"  {exactly_once(url, outbox, args.events)}")
    print(f"({time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores; logs in {log})")


if __name__ == "__main__":
    main()
