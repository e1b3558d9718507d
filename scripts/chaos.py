"""`make chaos`: the real receiver and relay sidecar on loopback, killed and cut off while events flow.

A producer posts usage events to the relay (in small arrays, minting its own event ids so a retried POST
is the same events); a share of usages is re-sent by the "gateway" under a new event id with the same
requestId. Meanwhile the receiver (`creditrelay serve`) is SIGKILLed and restarted several times, the
relay once, and the database is restarted once — really, with `--restart-database` where the script may
(root, a local MariaDB or PostgreSQL), otherwise by cutting the receiver's connection to it through a TCP
proxy. At the
end every accepted usage must be charged exactly once and the ledger must add up; the counts are printed
and the exit status says whether the checks held.
"""

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from creditrelay.schema.database import make_engine
from creditrelay.schema.tables import usage_records, users
from scripts.benchkit import OPENING, ledger_counts, make_database
from scripts.processes import free_port, kill_hard, start, stop, wait_healthy
from scripts.tcp_proxy import TcpProxy

SECRET = "chaos-secret-chaos-secret-chaos-secret-0123"  # noqa: S105 - a throwaway secret for local servers


@dataclass
class Tally:
    sent: int = 0
    accepted: set[str] = field(default_factory=set)  # event ids answered 202
    usage_cost: dict[str, tuple[int, int]] = field(default_factory=dict)  # requestId -> (key, cost)
    resent_under_new_id: int = 0
    receiver_kills: int = 0
    relay_kills: int = 0
    database_restarts: int = 0
    how_restarted: str = "cut through the proxy"
    lock: threading.Lock = field(default_factory=threading.Lock)


def produce(relay_url: str, count: int, resend_share: float, tally: Tally, rng: random.Random) -> None:
    """Post ``count`` usages; a POST that fails is retried with the same events (ids minted here)."""
    batch: list[dict[str, object]] = []
    for n in range(count):
        key, cost = n % 20, 1 + n % 9
        data = {"remoteKeyId": key, "model": "gpt-4o", "creditCost": cost, "requestId": f"req-{n}"}
        event = {"eventId": f"chaos-{n}", "eventType": "usage", "timestamp": int(time.time()), "data": data}
        batch.append(event)
        with tally.lock:
            tally.usage_cost[f"req-{n}"] = (key, cost)
        if rng.random() < resend_share:
            batch.append(event | {"eventId": f"chaos-{n}-again"})
            tally.resent_under_new_id += 1
        if len(batch) >= 8 or n == count - 1:
            _post_until_accepted(relay_url, batch, tally)
            batch = []


def _post_until_accepted(relay_url: str, batch: list[dict[str, object]], tally: Tally) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with tally.lock:
            tally.sent += len(batch)
        try:
            reply = httpx.post(f"{relay_url}/events", json=batch, timeout=5)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if reply.status_code == 202:
            with tally.lock:
                tally.accepted.update(reply.json()["eventIds"])
            return
        time.sleep(0.1)
    raise SystemExit("the relay did not accept events for two minutes")


def restart_mariadb() -> bool:
    """Shut MariaDB down and start it again, when this script may (root, a local server)."""
    admin = shutil.which("mariadb-admin")
    if admin is None or not Path("/usr/sbin/mariadbd").exists():
        return False
    subprocess.run([admin, "-uroot", "shutdown"], check=False, capture_output=True)
    time.sleep(1)
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd", "--",
                    "--user=mysql"], check=False)  # fmt: skip
    for _ in range(60):
        if subprocess.run([admin, "-uroot", "ping"], capture_output=True, check=False).returncode == 0:
            return True
        time.sleep(0.5)
    raise SystemExit("MariaDB did not come back after the restart")


def restart_postgres() -> bool:
    """Restart the local PostgreSQL cluster (fast shutdown: every connection is cut), when this script may."""
    control = shutil.which("pg_ctlcluster")
    versions = sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").exists() else []
    if control is None or not versions:
        return False
    version = versions[-1].parent.name
    restarted = subprocess.run([control, "--skip-systemctl-redirect", version, "main", "restart"], check=False,
                               capture_output=True)  # fmt: skip
    if restarted.returncode != 0:
        return False
    for _ in range(60):
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode == 0:
            return True
        time.sleep(0.5)
    raise SystemExit("PostgreSQL did not come back after the restart")


RESTARTS = {"mysql": restart_mariadb, "postgresql": restart_postgres}
PORTS = {"mysql": 3306, "postgresql": 5432}


def run_chaos(database_url: str, work: Path, *, events: int, receiver_kills: int, restart_database: bool) -> str:
    """Run the whole scenario; returns the report, raises SystemExit when a check fails."""
    rng = random.Random(7)
    make_database(database_url)
    url = sa.make_url(database_url)
    tally = Tally()
    log = work / "chaos-processes.log"
    relay_port, receiver_port = free_port(), free_port()
    relay_url, receiver_url = f"http://127.0.0.1:{relay_port}", f"http://127.0.0.1:{receiver_port}"
    backend = url.get_backend_name()
    server = backend in PORTS
    with TcpProxy(url.host or "127.0.0.1", url.port or PORTS[backend]) if server else nullcontext() as proxy:
        served_url = url.set(host="127.0.0.1", port=proxy.port) if proxy else url
        env = {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": served_url.render_as_string(hide_password=False)}
        outbox_url = f"sqlite:///{work / 'outbox.db'}"
        relay_args = ["relay", "--listen", f"127.0.0.1:{relay_port}", "--to", f"{receiver_url}/api/webhooks/events",
                      "--outbox", outbox_url, "--retry-schedule", ",".join(["0.2"] * 600)]  # fmt: skip
        receiver = start(["serve", "--port", str(receiver_port)], env, log)
        relay = start(relay_args, env, log)
        wait_healthy(f"{receiver_url}/api/webhooks/health", receiver, log)
        wait_healthy(f"{relay_url}/health", relay, log)
        producer = threading.Thread(target=produce, args=(relay_url, events, 0.2, tally, rng))
        producer.start()
        try:
            for kill in range(receiver_kills):
                time.sleep(rng.uniform(0.3, 1.0))
                kill_hard(receiver)
                tally.receiver_kills += 1
                time.sleep(0.3)
                receiver = start(["serve", "--port", str(receiver_port)], env, log)
                if kill == 0:
                    kill_hard(relay)
                    tally.relay_kills += 1
                    relay = start(relay_args, env, log)
                if kill == 1:
                    if restart_database and server and RESTARTS[backend]():
                        tally.how_restarted = f"a real restart of {backend}"
                    elif proxy:
                        proxy.cut()
                        time.sleep(1.0)
                        proxy.restore()
                    tally.database_restarts += 1
            producer.join()
            wait_healthy(f"{receiver_url}/api/webhooks/health", receiver, log, timeout=60)
            wait_healthy(f"{relay_url}/health", relay, log, timeout=60)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                outbox = httpx.get(f"{relay_url}/health").json()
                if outbox["pending"] == 0:
                    break
                time.sleep(0.2)
        finally:
            stop(relay)
            stop(receiver)
    return verify(database_url, tally, outbox)


def verify(database_url: str, tally: Tally, outbox: dict[str, int]) -> str:
    engine = make_engine(database_url)
    with engine.connect() as c:
        charged: dict[str, int] = {
            str(r): int(cost) for r, cost in c.execute(sa.select(usage_records.c.requestId, usage_records.c.creditCost))
        }
        balances: dict[str, int] = {email: int(b) for email, b in c.execute(sa.select(users.c.email, users.c.balance))}
        counts = ledger_counts(c)
        off, unpaired, processed = counts["off"], counts["unpaired"], counts["processed"]
    engine.dispose()
    accepted_usages = {f"req-{e.removeprefix('chaos-').removesuffix('-again')}" for e in tally.accepted}
    problems = []
    if set(charged) != accepted_usages:
        problems.append(f"{len(accepted_usages - set(charged))} accepted usages missing, "
                        f"{len(set(charged) - accepted_usages)} charged that were never accepted")  # fmt: skip
    expected: dict[str, int] = {}
    for request_id in accepted_usages:
        key, cost = tally.usage_cost[request_id]
        expected[f"bench{key}@example.com"] = expected.get(f"bench{key}@example.com", 0) + cost
    for email, balance in balances.items():
        if OPENING - balance != expected.get(email, 0):
            problems.append(f"{email}: charged {OPENING - balance}, expected {expected.get(email, 0)}")
            break
    if off or unpaired:
        problems.append(f"{off} balances off, {unpaired} usage without transaction")
    if outbox["pending"] or outbox["dead"]:
        problems.append(f"outbox not drained: {outbox}")
    report = (
        f"sent {tally.sent} events (POST retries included), accepted {len(tally.accepted)}, "
        f"delivered {outbox['delivered']}, usages {len(accepted_usages)} charged {len(charged)} times in all; "
        f"duplicates suppressed {processed - len(charged)} (usages re-sent under a new event id: "
        f"{tally.resent_under_new_id}); kills survived: receiver {tally.receiver_kills}, "
        f"relay {tally.relay_kills}, database restarts {tally.database_restarts} ({tally.how_restarted})"
    )
    if problems:
        raise SystemExit("CHAOS CHECK FAILED: " + "; ".join(problems) + "\n" + report)
    return "exactly once: OK — " + report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--database-url",
        default="mysql+pymysql://root@127.0.0.1:3306/creditrelay_chaos",
        help="the ledger's database (postgresql://postgres@127.0.0.1:5432/creditrelay_chaos for PostgreSQL)",
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--receiver-kills", type=int, default=5)
    parser.add_argument(
        "--restart-database", action="store_true", help="really restart the local MariaDB or PostgreSQL once"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="creditrelay-chaos-"))
    started = time.monotonic()
    print(run_chaos(args.database_url, work, events=args.events, receiver_kills=args.receiver_kills,
                    restart_database=args.restart_database))  # fmt: skip
    print(f"({time.monotonic() - started:.0f} s; logs in {work})")


if __name__ == "__main__":
    main()
