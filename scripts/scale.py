"""`make scale`: the operator's reads and the cleanup at a million rows, on SQLite, MySQL and PostgreSQL.

For each database: 1,000,000 webhook logs in the last hour and 500,000 older than a week (over 1,000
gateway keys, three of them a user's), 100,000 users and one of them with 100,000 usages. Then
``creditrelay serve`` answers ``GET /api/admin/stats`` (time of each call, the server's RSS before and
after); every list of the admin console is timed as the browser gets it (the page, rendered: first,
middle and last pages, each filter); webhooks are timed alone and while stats are asked in a loop (a
read must not hold them up); the same figures are counted the way they were before (rows loaded into
Python); ``creditrelay cleanup`` deletes the old half; and a member with a million transactions in one
month gets that month's statement, from the command line and from the portal (``scale_statement``).
Prints figures; asserts nothing about timing.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from creditrelay.billing.cleanup import delete_old_logs
from creditrelay.schema.database import make_engine, utc
from creditrelay.schema.tables import api_keys, credit_transactions, usage_records, webhook_logs
from creditrelay.schema.tables import users as users_table
from scripts.benchkit import _rss_kb, make_database, serve
from scripts.scale_statement import measure_statement

SECRET = "scale-secret-scale-secret-scale-secret-01"  # noqa: S105 - a throwaway secret for a local server
ADMIN = "scale-admin-token-scale-admin-token-0123"
CHUNK = 20_000


KEYS = 1000  # gateway keys the logs are spread over; keys k1, k2 and k3 bill scale-user-0


def fill(url: str, recent: int, old: int, now: float, users: int) -> float:
    """``recent`` logs over the last hour and ``old`` ten days back (1 % failed, 1 % ignored) over ``KEYS``
    gateway keys, and ``users`` users (one in ten below zero); seconds taken."""
    started = time.monotonic()
    engine = make_engine(url)
    rng = random.Random(7)
    statuses = ["processed"] * 98 + ["failed", "ignored"]

    def rows(start: int, count: int, total: int, newest: float, span: float, prefix: str) -> list[dict[str, object]]:
        """Rows ``start`` to ``start + count`` of ``total`` arriving evenly over ``span`` seconds up to
        ``newest``, in time order, as a receiver writes them."""
        return [
            {"eventId": f"{prefix}-{i}", "eventType": "usage", "payload": "{}", "payloadHash": "h",
             "remoteKeyId": f"k{rng.randrange(KEYS)}", "status": rng.choice(statuses),
             "createdAt": utc(newest - span + span * i / total)}
            for i in range(start, start + count)
        ]  # fmt: skip

    moment = utc(now)
    for start in range(0, users, CHUNK):
        batch = [
            {"email": f"scale-user-{i}@example.com", "balance": -5 if i % 10 == 0 else i, "openPollUsages": 0,
             "createdAt": moment, "updatedAt": moment}
            for i in range(start, min(users, start + CHUNK))
        ]  # fmt: skip
        with engine.begin() as connection:
            connection.execute(users_table.insert(), batch)
    with engine.begin() as connection:
        first = connection.execute(
            sa.select(users_table.c.id).where(users_table.c.email == "scale-user-0@example.com")
        ).scalar()
        keys = [{"remoteKeyId": f"k{k}", "userId": first, "createdAt": moment, "updatedAt": moment} for k in (1, 2, 3)]
        connection.execute(api_keys.insert(), keys)
    history(engine, now)

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


HISTORY = 100_000  # usages of scale-user-1, over the last 60 days


def history(engine: sa.Engine, now: float) -> None:
    """scale-user-1's ``HISTORY`` usages and their transactions, evenly over 60 days, balances consistent."""
    with engine.begin() as connection:
        user = connection.execute(
            sa.select(users_table.c.id).where(users_table.c.email == "scale-user-1@example.com")
        ).scalar()
    models = ["gpt-4o-mini", "claude-3-5-sonnet-20241022", "gemini-1.5-pro-002", "deepseek-chat"]
    balance = 10**9
    for start in range(0, HISTORY, CHUNK):
        usages, changes = [], []
        for i in range(start, min(HISTORY, start + CHUNK)):
            at = utc(now - 60 * 86400 + 60 * 86400 * i / HISTORY)
            usages.append({
                "usageKey": f"evt:h-{i}", "userId": user, "remoteKeyId": "k1", "eventId": f"h-{i}",
                "model": models[i % 4], "promptTokens": 10, "completionTokens": 5, "totalTokens": 15,
                "creditCost": 3, "source": "webhook", "usedAt": at, "createdAt": at,
            })  # fmt: skip
        with engine.begin() as connection:
            connection.execute(usage_records.insert(), usages)
            ids = dict(
                connection.execute(
                    sa.select(usage_records.c.usageKey, usage_records.c.id).where(
                        usage_records.c.usageKey.in_([u["usageKey"] for u in usages])
                    )
                ).all()
            )
            for usage in usages:
                balance -= 3
                changes.append({
                    "userId": user, "type": "usage", "amount": -3, "balance": balance,
                    "reference": f"usage:{usage['usageKey']}", "usageRecordId": ids[usage["usageKey"]],
                    "createdAt": usage["createdAt"],
                })  # fmt: skip
            connection.execute(credit_transactions.insert(), changes)
            connection.execute(users_table.update().where(users_table.c.id == user).values(balance=balance))


def console_ms(url: str, repeat: int) -> dict[str, float]:
    """Each admin list as the browser gets it, rendered (median of ``repeat`` loads, ms)."""
    with httpx.Client(base_url=url, timeout=300) as client:
        assert client.post("/admin/login", data={"token": ADMIN}).status_code == 303
        auth = {"Authorization": f"Bearer {ADMIN}"}
        newest_id = client.get("/api/admin/webhook-logs", params={"limit": 1}, headers=auth).json()["data"][0]["id"]
        back = time.time() - 10.5 * 86400  # the middle of the old day
        heavy = client.get("/api/admin/users", params={"q": "scale-user-1@"}, headers=auth).json()["data"][0]["id"]
        pages = {
            "logs, newest": {},
            "logs, a middle page": {"before": newest_id // 2},
            "logs, oldest": {"after": 0},
            "logs failed, newest": {"status": "failed"},
            "logs failed, oldest": {"status": "failed", "after": 0},
            "logs of a key": {"key": "k7"},
            "logs of a key, failed": {"key": "k7", "status": "failed"},
            "logs of a user (3 keys)": {"user": "scale-user-0@example.com"},
            "logs, a minute 10 days back": {"since": _iso(back), "until": _iso(back + 60)},
            "logs, an event id": {"event": "r-777"},
        }  # fmt: skip
        found = {name: _median_ms(client, "/admin/logs", query, repeat) for name, query in pages.items()}
        for name, path, query in (
            ("users, lowest balance", "/admin/users", {}),
            ("users, below zero", "/admin/users", {"show": "below-zero"}),
            ("users, by email, a later page", "/admin/users", {"sort": "email", "after": "2:scale-user-5@example.com"}),
            ("a user's page (100,000 usages in 60 days)", f"/admin/users/{heavy}", {}),
            ("that user's oldest transactions", f"/admin/users/{heavy}", {"before": 60}),
            ("overview", "/admin/", {}),
            ("metrics", "/metrics", {}),
        ):  # fmt: skip
            found[name] = _median_ms(client, path, query, repeat)
    return found


def _iso(moment: float) -> str:
    return utc(moment).isoformat(timespec="seconds")


def _median_ms(client: httpx.Client, path: str, query: Mapping[str, str | int], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        reply = client.get(path, params=query)
        times.append((time.perf_counter() - started) * 1000)
        if reply.status_code != 200:
            raise SystemExit(f"{path} {query} answered {reply.status_code}: {reply.text[:300]}")
    return statistics.median(times)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(kind: str, url: str, args: argparse.Namespace) -> dict[str, str]:
    make_database(url)
    now = time.time()
    filled = fill(url, args.recent, args.old, now, args.users)
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
        console = console_ms(server.url, args.repeat)
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
        statement = measure_statement(
            url, dict(os.environ) | env, server.url, server.process.pid, SECRET, args.statement_rows, now
        )
    loaded = loaded_stats_seconds(url, now)
    engine = make_engine(url)
    started = time.monotonic()
    deleted = delete_old_logs(engine, utc(now) - timedelta(days=7))
    cleanup_s = time.monotonic() - started
    engine.dispose()
    return (
        {
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
        | statement
        | {f"console: {name}": f"{ms:.0f} ms" for name, ms in console.items()}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recent", type=int, default=1_000_000, help="logs in the last hour")
    parser.add_argument("--old", type=int, default=500_000, help="logs ten days old, for cleanup")
    parser.add_argument("--repeat", type=int, default=3, help="stats calls (and each console page) timed")
    parser.add_argument("--users", type=int, default=100_000, help="users in the users list")
    parser.add_argument("--webhooks", type=int, default=200, help="webhooks timed alone and beside stats")
    parser.add_argument(
        "--statement-rows", type=int, default=1_000_000, help="transactions in one month of the statement's member"
    )
    parser.add_argument("--skip-mysql", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "CREDITRELAY_SCALE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/creditrelay_scale"
        ),
    )
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
    if not args.skip_postgres:
        results.append(measure("PostgreSQL", args.postgres_url, args))
    names = [name for name in results[0] if not name.startswith("console: ")]
    print(f"\n| {' | '.join(names)} |\n|{'---|' * len(names)}")
    for result in results:
        print(f"| {' | '.join(result[name] for name in names)} |")
    pages = [name for name in results[0] if name.startswith("console: ")]
    print(f"\n| admin console page, rendered (median) | {' | '.join(r['database'] for r in results)} |")
    print(f"|---|{'---|' * len(results)}")
    for name in pages:
        print(f"| {name.removeprefix('console: ')} | {' | '.join(r[name] for r in results)} |")


if __name__ == "__main__":
    main()
