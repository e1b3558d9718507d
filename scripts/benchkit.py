"""The parts of `make bench`: request files, servers, wrk runs, the ledger check, the seed's targets."""

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from creditrelay.billing.accounts import NewUser, create_user, link_key
from creditrelay.receiver.ingest import Ingestor
from creditrelay.schema.database import make_engine, utc
from creditrelay.schema.migrate import upgrade
from creditrelay.schema.tables import credit_transactions, usage_records, users, webhook_logs
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import parse_event
from scripts.databases import recreate

ROOT = Path(__file__).resolve().parents[1]
USERS = 100
OPENING = 10**12
CREDITRELAY = str(Path(sys.executable).with_name("creditrelay"))


@dataclass
class Server:
    url: str
    process: "subprocess.Popen[bytes]"
    peak_rss_kb: int = 0


@dataclass
class Result:
    name: str = ""
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_mb: float = 0.0
    non_200: int = 0
    sent_per_thread: list[int] = field(default_factory=list)
    in_flight_allowance: int = 0
    ceiling_rps: float = 0.0  # the bare ceiling measured beside this run (0: not compared)
    ledger: str = "-"
    duplicate_ms: tuple[float, float] | None = None  # server-side duplicate detection, p50 and p99
    db_cpu_us: float | None = None  # the database server's CPU per event of the run (None: SQLite)


def write_requests(path: Path, prefix: str, count: int, secret: str, *, duplicates: bool) -> Path:
    """Signed request lines; with ``duplicates`` every event is sent twice, the copy 37 requests later."""
    key = secret.encode()
    with path.open("w") as out:
        for position in range(count):
            index = position // 2 if duplicates else position
            if duplicates and position % 2:
                index = max(0, index - 18)
            body = json.dumps(
                {
                    "eventId": f"{prefix}-{index}",
                    "eventType": "usage",
                    "timestamp": 1_767_225_600 + index,
                    "data": {
                        "remoteKeyId": index % USERS,
                        "model": "gpt-4o-mini",
                        "promptTokens": 120,
                        "completionTokens": 80,
                        "totalTokens": 200,
                        "creditCost": 1 + index % 20,
                        "requestId": f"{prefix}-req-{index}",
                    },
                },
                separators=(",", ":"),
            ).encode()
            out.write(f"{hmac.new(key, body, hashlib.sha256).hexdigest()}\t{body.decode()}\n")
    return path


def make_database(url: str) -> None:
    """A fresh, migrated database with USERS users, each owning gateway key ``str(i)``."""
    engine = make_engine(recreate(url))
    upgrade(engine)

    def users(connection: sa.Connection) -> None:
        now = utc(time.time())
        for i in range(USERS):
            user = create_user(connection, NewUser(f"bench{i}@example.com", opening_credits=OPENING), now)
            link_key(connection, str(i), user.id, now)

    run_transaction(engine, users)
    engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kb(pid: int) -> int:
    """Resident memory of a process and its descendants (uvicorn workers, their writer processes)."""
    total = 0
    pending = [pid]
    while pending:
        process = Path(f"/proc/{pending.pop()}")
        try:
            match = re.search(r"VmRSS:\s+(\d+)", (process / "status").read_text())
            pending += [int(child) for task in (process / "task").iterdir() for child in _children(task)]
        except OSError:  # it ended meanwhile
            continue
        total += int(match.group(1)) if match else 0
    return total


def _children(task: Path) -> list[str]:
    try:
        return (task / "children").read_text().split()
    except OSError:
        return []


def _pinned(command: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *command] if cpu is not None and os.path.exists("/usr/bin/taskset") else command


def program(root: Path) -> list[str]:
    """The command line of the revision checked out at ``root``, run from there: ``creditrelay.cli`` since one
    import namespace, ``receiver.cli`` before."""
    if (root / "creditrelay" / "__main__.py").exists():
        return [sys.executable, "-m", "creditrelay"]
    return [sys.executable, "-c", "import sys; from receiver.cli import main; sys.exit(main())"]


@contextmanager
def serve(
    command: list[str] | None,
    env: dict[str, str],
    *,
    cpu: str | None,
    ceiling: bool = False,
    port: int = 0,
    root: Path = ROOT,
) -> Iterator[Server]:
    """creditrelay serve (or the bare ceiling app) on ``port`` (or a free one), with the same uvicorn settings;
    ``root``: another revision's checkout, whose own command line serves."""
    port = port or _free_port()
    if ceiling:
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", "scripts/bench", "ceiling:app", "--port", str(port),
                "--workers", "1", "--no-access-log", "--log-level", "warning", "--no-server-header"]  # fmt: skip
    else:
        assert command is not None
        argv = [*([CREDITRELAY] if root == ROOT else program(root)), *command, "--port", str(port)]
    with Path(os.environ.get("CREDITRELAY_BENCH_LOG", "/dev/null")).open("ab") as log:
        process = subprocess.Popen(_pinned(argv, cpu), env=os.environ | env, cwd=root, stdout=log, stderr=log)
    server = Server(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.post(f"{server.url}/api/webhooks/events", content=b"{}", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {argv}") from None
            time.sleep(0.1)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            server.peak_rss_kb = max(server.peak_rss_kb, _rss_kb(process.pid))
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield server
    finally:
        stop.set()
        sampler.join()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_load(
    server: Server, requests_file: Path, args: Any, *, connections: int | None = None, load_cpu: str | None = ""
) -> Result:
    """wrk against ``server`` (pinned to ``load_cpu``; by default ``args.load_cpu``, None: unpinned)."""
    conns = connections or args.connections
    threads = min(args.threads, conns)
    script = str(ROOT / "scripts/bench/replay.lua")
    command = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{args.duration}s", "--latency", "-s", script,
               f"{server.url}/api/webhooks/events", "--", str(requests_file), str(threads)]  # fmt: skip
    cpu = args.load_cpu if load_cpu == "" else load_cpu
    output = subprocess.run(_pinned(command, cpu), capture_output=True, text=True, check=True).stdout
    result = Result()
    result.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    result.p50_ms = _ms(re.search(r"\n\s+50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    result.p99_ms = _ms(re.search(r"\n\s+99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    per_thread = sorted(re.findall(r"thread (\d+) sent (\d+) non200 (\d+) lines (\d+)", output))
    result.non_200 = sum(int(failed) for _, _, failed, _ in per_thread)
    result.sent_per_thread = [int(sent) for _, sent, _, _ in per_thread]
    result.in_flight_allowance = conns  # requests cut off by the end of the run may or may not have committed
    result.rss_mb = server.peak_rss_kb / 1024
    return result


def ledger_counts(connection: sa.Connection) -> dict[str, int]:
    """What the exactly-once checks count, in SQLAlchemy's words (each database spells and quotes them its
    own way): usage records, processed deliveries, credits spent, the sum of balances, the users whose
    balance is not the sum of their transactions, the usage records without their one transaction."""
    ct, ur, logs, u = credit_transactions.c, usage_records.c, webhook_logs.c, users.c
    summed = sa.select(sa.func.coalesce(sa.func.sum(ct.amount), 0)).where(ct.userId == u.id).scalar_subquery()
    queries = {
        "records": sa.select(sa.func.count()).select_from(usage_records),
        "distinct": sa.select(sa.func.count(sa.distinct(ur.usageKey))),
        "processed": sa.select(sa.func.count()).where(logs.status == "processed"),
        "spent": sa.select(sa.func.coalesce(sa.func.sum(ur.creditCost), 0)),
        "balances": sa.select(sa.func.coalesce(sa.func.sum(u.balance), 0)),
        "off": sa.select(sa.func.count()).select_from(users).where(u.balance != summed),
        "unpaired": sa.select(sa.func.count())
        .select_from(usage_records.outerjoin(credit_transactions, ct.usageRecordId == ur.id))
        .where(ct.id.is_(None)),
    }
    return {name: int(connection.execute(query).scalar() or 0) for name, query in queries.items()}


def check_ledger(url: str, result: Result, requests_file: Path, threads: int) -> str:
    """Exactly-once, checked in the database after a run: every charged event was sent, every balance
    adds up, every usage has its one transaction, and the balances dropped by exactly the usage's cost."""
    engine = make_engine(url)
    with engine.connect() as connection:
        found = ledger_counts(connection)
        charged = {str(event_id) for event_id in connection.scalars(sa.select(usage_records.c.eventId))}
    engine.dispose()
    sent = _events_sent(requests_file, threads, result.sent_per_thread)
    problems = []
    if USERS * OPENING - found["balances"] != found["spent"]:
        problems.append(f"balances dropped {USERS * OPENING - found['balances']}, usage cost {found['spent']}")
    if found["off"] or found["unpaired"]:
        problems.append(f"{found['off']} balances off, {found['unpaired']} usage without transaction")
    if found["records"] != found["processed"]:
        problems.append(f"{found['records']} usage records for {found['processed']} processed deliveries")
    if not charged <= sent:
        problems.append(f"{len(charged - sent)} charged events were never sent")
    missing = len(sent - charged)
    if missing > result.in_flight_allowance + result.non_200:
        problems.append(f"{missing} events sent but not charged")
    verdict = "OK" if not problems else "FAILED: " + "; ".join(problems)
    return f"{verdict} ({found['records']} charged once of {len(sent)} distinct sent)"


def _events_sent(requests_file: Path, threads: int, sent_per_thread: list[int]) -> set[str]:
    """The distinct event ids wrk sent: each thread's stripe of the file, up to what it sent."""
    stripes: list[list[str]] = [[] for _ in range(threads)]
    with requests_file.open() as lines:
        for number, line in enumerate(lines):
            body = line.split("\t", 1)[1]
            stripes[number % threads].append(body[len('{"eventId":"') : body.index('"', len('{"eventId":"'))])
    sent: set[str] = set()
    for stripe, count in zip(stripes, sent_per_thread, strict=True):
        sent.update(stripe[: min(count, len(stripe))])
    return sent


def duplicate_detection_ms(url: str, samples: int = 500) -> tuple[float, float]:
    """Server-side time to answer a redelivered event, p50 and p99 in ms: the group-commit writer's own
    call for a lone request (its held connection, one transaction)."""
    engine = make_engine(url)
    with engine.connect() as c:
        payloads = [row[0] for row in c.execute(sa.text("SELECT payload FROM webhook_logs LIMIT :n"), {"n": samples})]
    ingestor = Ingestor(engine, time.time)
    timings = []
    for payload in payloads:
        event = parse_event(payload.encode())
        started = time.perf_counter()
        [outcome] = ingestor.ingest_batch([event])
        timings.append((time.perf_counter() - started) * 1000)
        if outcome.status.value != "duplicate":
            raise SystemExit(f"expected a duplicate, got {outcome.status.value}")
    engine.dispose()
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.99) - 1]


def writer_cost_us(
    url: str,
    requests_file: Path,
    *,
    batch: int = 32,
    events: int = 6400,
    request_ids: bool = True,
    polled: bool = False,
) -> tuple[float, float]:
    """The group-commit writer alone, in this process, on a fresh database: CPU and wall time per event in
    µs over batches of ``batch`` unique events (the thread's CPU, SQLite's C code included; not the
    database server's). No HTTP, no load generator and no other thread share the core, so the host's
    noise blurs it less than the end-to-end ratio (on a shared host it still moves between runs).

    Without ``request_ids`` the events are seed 004's payload (no ``requestId``): each is kept open for
    matching with its log row; with ``polled`` too, every user has a usage charged from the log still
    waiting for its webhook, so each batch also looks for one to pair with (``billing.matching``)."""
    make_database(url)
    with requests_file.open() as lines:
        bodies = [line.split("\t", 1)[1].rstrip("\n").encode() for line, _ in zip(lines, range(events), strict=False)]
    if not request_ids:
        bodies = [_without_request_id(body) for body in bodies]
    parsed = [parse_event(body) for body in bodies]
    engine = make_engine(url)
    if polled:
        with engine.begin() as connection:
            connection.execute(users.update().values(openPollUsages=1))
    ingestor = Ingestor(engine, time.time)
    ingestor.ingest_batch(parsed[:batch])  # warm: connection, compiled statements
    cpu, wall = time.thread_time(), time.perf_counter()
    for start in range(batch, len(parsed), batch):
        ingestor.ingest_batch(parsed[start : start + batch])
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    engine.dispose()
    count = len(parsed) - batch
    return cpu / count * 1e6, wall / count * 1e6


def _without_request_id(body: bytes) -> bytes:
    event = json.loads(body)
    del event["data"]["requestId"]
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass
class Summary:
    """A scenario over its rounds: medians of the figures, the spread of the ratio, the worst of the rest."""

    name: str
    rounds: int
    rps: float
    ceiling_rps: float
    ratio: float | None
    ratio_range: tuple[float, float] | None
    p50_ms: float
    p99_ms: float
    worst_p99_ms: float
    rss_mb: float
    non_200: int
    ledger: str
    duplicate_ms: tuple[float, float] | None
    db_cpu_us: float | None = None


def summarize(results: list[Result]) -> Summary:
    ratios = [r.rps / r.ceiling_rps for r in results if r.ceiling_rps]
    failed = [r.ledger for r in results if not r.ledger.startswith("OK")]
    duplicate = [r.duplicate_ms for r in results if r.duplicate_ms is not None]
    return Summary(
        name=results[0].name,
        rounds=len(results),
        rps=statistics.median(r.rps for r in results),
        ceiling_rps=statistics.median(r.ceiling_rps for r in results),
        ratio=statistics.median(ratios) if ratios else None,
        ratio_range=(min(ratios), max(ratios)) if ratios else None,
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        worst_p99_ms=max(r.p99_ms for r in results),
        rss_mb=max(r.rss_mb for r in results),
        non_200=sum(r.non_200 for r in results),
        ledger=(
            f"{len(failed)} of {len(results)} rounds " + "; ".join(failed)
            if failed
            else f"OK in {len(results)} of {len(results)} {results[-1].ledger[3:]}"
        ),
        duplicate_ms=(
            (statistics.median(d[0] for d in duplicate), statistics.median(d[1] for d in duplicate))
            if duplicate
            else None
        ),
        db_cpu_us=statistics.median(cpu) if (cpu := [r.db_cpu_us for r in results if r.db_cpu_us]) else None,
    )
