"""`make scale`: the operator's reads and the cleanup at a million rows, on SQLite and MySQL.

For each database: 1,000,000 webhook logs in the last hour and 500,000 older than a week, then
``creditrelay serve`` answers ``GET /api/admin/stats`` (time of each call, the server's RSS before and
after), webhooks are timed alone and while stats are asked in a loop (a read must not hold them up), the
same figures are counted the way they were before (rows loaded into Python), and ``creditrelay cleanup``
deletes the old half. Prints figures; asserts nothing about timing.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from creditrelay.billing.cleanup import delete_old_logs
from creditrelay.schema.database import make_engine, utc
from creditrelay.schema.tables import webhook_logs
from scripts.benchkit import _rss_kb, make_database, serve

SECRET = "scale-secret-scale-secret-scale-secret-01"  # noqa: S105 - a throwaway secret for a local server
ADMIN = "scale-admin-token-scale-admin-token-0123"
CHUNK = 20_000


def fill(url: str, recent: int, old: int, now: float) -> float:
    """``recent`` logs over the last hour and ``old`` ten days back (1 % failed, 1 % ignored); seconds taken."""
    started = time.monotonic()
    engine = make_engine(url)
    rng = random.Random(7)
    statuses = ["processed"] * 98 + ["failed", "ignored"]

    def rows(start: int, count: int, total: int, newest: float, span: float, prefix: str) -> list[dict[str, object]]:
        """Rows ``start`` to ``start + count`` of ``total`` arriving evenly over ``span`` seconds up to
        ``newest``, in time order, as a receiver writes them."""
        return [
            {"eventId": f"{prefix}-{i}", "eventType": "usage", "payload": "{}", "payloadHash": "h",
             "status": rng.choice(statuses), "createdAt": utc(newest - span + span * i / total)}
            for i in range(start, start + count)
        ]  # fmt: skip

    for prefix, total, newest, span in (("o", old, now - 10 * 86400, 86400.0), ("r", recent, now, 3600.0)):
        for start in range(0, total, CHUNK):
            batch = rows(start, min(CHUNK, total - start), total, newest, span, prefix)
            with engine.begin() as connection:
                connection.execute(webhook_logs.insert(), batch)
    engine.dispose()
    return time.monotonic() - started


def loaded_stats_seconds(url: str, now: float) -> float:
    """How stats were counted before: every row of the hour read into Python and bucketed there."""
    engine = make_engine(url)
    started = time.monotonic()
    hour_ago = utc(now) - timedelta(hours=1)
    with engine.connect() as connection:
        recent = connection.execute(
            sa.select(webhook_logs.c.status, webhook_logs.c.createdAt).where(webhook_logs.c.createdAt >= hour_ago)
        ).all()
    per_minute = [0] * 60
    for _status, created in recent:
        per_minute[min(59, int((created - hour_ago).total_seconds() // 60))] += 1
    engine.dispose()
    return time.monotonic() - started


def webhook_ms(url: str, count: int, prefix: str) -> list[float]:
    """Latency of ``count`` webhook deliveries, one after another (unknown key: recorded, not charged)."""
    import hashlib
    import hmac
    import json

    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(count):
            body = json.dumps({"eventId": f"{prefix}-{i}", "eventType": "ping", "timestamp": 1}).encode()
            signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            started = time.perf_counter()
            reply = client.post(
                "/api/webhooks/events",
                content=body,
                headers={"Content-Type": "application/json", "X-Webhook-Signature": signature},
            )
            times.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 200:
                raise SystemExit(f"webhook answered {reply.status_code}: {reply.text}")
    return times


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(kind: str, url: str, args: argparse.Namespace) -> dict[str, str]:
    make_database(url)
    now = time.time()
    filled = fill(url, args.recent, args.old, now)
    env = {"DATABASE_URL": url, "WEBHOOK_SECRET": SECRET, "ADMIN_TOKEN": ADMIN, "LOG_LEVEL": "warning"}
    with serve(["serve"], env, cpu=None) as server:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        rss_before = _rss_kb(server.process.pid) / 1024
        stats_s = []
        for _ in range(args.repeat):
            started = time.monotonic()
            reply = httpx.get(f"{server.url}/api/admin/stats", headers=auth, timeout=120)
            stats_s.append(time.monotonic() - started)
            assert reply.status_code == 200, reply.text
        counted = sum(reply.json()["data"]["lastHour"]["perMinute"])
        rss_after = _rss_kb(server.process.pid) / 1024
        alone = webhook_ms(server.url, args.webhooks, "alone")
        stop = threading.Event()

        def ask() -> None:
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    client.get(f"{server.url}/api/admin/stats", headers=auth)

        asker = threading.Thread(target=ask)
        asker.start()
        try:
            beside = webhook_ms(server.url, args.webhooks, "beside")
        finally:
            stop.set()
            asker.join()
    loaded = loaded_stats_seconds(url, now)
    engine = make_engine(url)
    started = time.monotonic()
    deleted = delete_old_logs(engine, utc(now) - timedelta(days=7))
    cleanup_s = time.monotonic() - started
    engine.dispose()
    return {
        "database": kind,
        "rows (filled in)": f"{args.recent + args.old:,} ({filled:.0f} s)",
        "stats, median of runs": f"{statistics.median(stats_s) * 1000:.0f} ms (counted {counted:,})",
        "stats, rows loaded (before)": f"{loaded * 1000:.0f} ms",
        "ratio": f"{loaded / statistics.median(stats_s):.1f}x",
        "server RSS before/after stats": f"{rss_before:.0f} / {rss_after:.0f} MB",
        "webhook p50/p99 alone": f"{p(alone, 0.5):.1f} / {p(alone, 0.99):.1f} ms",
        "webhook p50/p99 beside stats": f"{p(beside, 0.5):.1f} / {p(beside, 0.99):.1f} ms",
        "cleanup": f"{deleted:,} rows in {cleanup_s:.1f} s ({deleted / cleanup_s:,.0f}/s)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recent", type=int, default=1_000_000, help="logs in the last hour")
    parser.add_argument("--old", type=int, default=500_000, help="logs ten days old, for cleanup")
    parser.add_argument("--repeat", type=int, default=3, help="stats calls timed")
    parser.add_argument("--webhooks", type=int, default=200, help="webhooks timed alone and beside stats")
    parser.add_argument("--skip-mysql", action="store_true")
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("CREDITRELAY_SCALE_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/creditrelay_scale"),
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        results.append(measure("SQLite", f"sqlite:///{folder}/scale.db", args))
    if not args.skip_mysql:
        results.append(measure("MySQL", args.mysql_url, args))
    names = list(results[0])
    print(f"\n| {' | '.join(names)} |\n|{'---|' * len(names)}")
    for result in results:
        print(f"| {' | '.join(result[name] for name in names)} |")


if __name__ == "__main__":
    main()
