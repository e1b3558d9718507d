"""`make scale`'s statement: one member with a million transactions in one month, and that month's
statement — ``creditrelay statement --user`` (its time and the process's peak memory) and the portal's
``statement.csv`` through ``creditrelay serve`` (its time and the server's memory before and after). Both
stream: the memory must not grow with the month."""

import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from creditrelay.billing.portal import issue_link
from creditrelay.schema.database import make_engine
from creditrelay.schema.portal_tokens import portal_key
from creditrelay.schema.tables import credit_transactions, usage_records, users
from scripts.benchkit import _rss_kb

EMAIL = "scale-statement@example.com"
CHUNK = 20_000
MODELS = ["gpt-4o-mini", "claude-3-5-sonnet-20241022", "gemini-1.5-pro-002", "deepseek-chat"]
# runs the command line's statement, its output counted and dropped, and prints the child's peak RSS (KiB)
PEAK = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, check=True)
lines = done.stdout.count(b"\\n")
last = done.stdout.rstrip(b"\\n").rsplit(b"\\n", 1)[-1].decode()
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, lines, last)
"""


def month_before(now: float) -> tuple[str, datetime]:
    """The calendar month before the current one (UTC): its name and first instant."""
    first = datetime.utcfromtimestamp(now).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = (first - timedelta(days=1)).replace(day=1)
    return start.strftime("%Y-%m"), start


def fill_statement(url: str, rows: int, now: float) -> tuple[int, str, float]:
    """The member, a top-up then ``rows`` - 1 usages spread over last month; their id, the month, seconds."""
    started = time.monotonic()
    engine = make_engine(url)
    name, start = month_before(now)
    span = 27 * 86400  # inside the month, whatever its length
    with engine.begin() as connection:
        connection.execute(users.insert().values(email=EMAIL, balance=0, openPollUsages=0, createdAt=start,
                                                 updatedAt=start))  # fmt: skip
        user = int(connection.execute(sa.select(users.c.id).where(users.c.email == EMAIL)).scalar_one())
        balance = 10**12
        connection.execute(credit_transactions.insert().values(
            userId=user, type="topup", amount=balance, balance=balance, reference="topup:scale-statement",
            createdAt=start + timedelta(seconds=1)))  # fmt: skip
    for first in range(1, rows, CHUNK):
        numbers = range(first, min(rows, first + CHUNK))
        at = {i: start + timedelta(seconds=1 + span * i / rows) for i in numbers}
        usages = [
            {"usageKey": f"evt:s-{i}", "userId": user, "remoteKeyId": "ks", "eventId": f"s-{i}", "model": MODELS[i % 4],
             "promptTokens": 10, "completionTokens": 5, "totalTokens": 15, "creditCost": 2, "source": "webhook",
             "usedAt": at[i], "createdAt": at[i]}
            for i in numbers
        ]  # fmt: skip
        with engine.begin() as connection:
            connection.execute(usage_records.insert(), usages)
            ids = dict(connection.execute(
                sa.select(usage_records.c.usageKey, usage_records.c.id).where(
                    usage_records.c.usageKey.in_([u["usageKey"] for u in usages]))).all())  # fmt: skip
            changes = []
            for usage in usages:
                balance -= 2
                changes.append({"userId": user, "type": "usage", "amount": -2, "balance": balance,
                                "reference": f"usage:{usage['usageKey']}", "usageRecordId": ids[usage["usageKey"]],
                                "createdAt": usage["createdAt"]})  # fmt: skip
            connection.execute(credit_transactions.insert(), changes)
    with engine.begin() as connection:
        connection.execute(users.update().where(users.c.id == user).values(balance=balance))
    engine.dispose()
    return user, name, time.monotonic() - started


def measure_statement(url: str, env: dict[str, str], server_url: str, server_pid: int, secret: str, rows: int,
                      now: float) -> dict[str, str]:  # fmt: skip
    """The month's statement of the member, by the command line and by the portal: time and memory."""
    user, month, filled = fill_statement(url, rows, now)
    command = [str(Path(sys.executable).with_name("creditrelay")), "statement", "--month", month, "--user", EMAIL]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PEAK, *command], env=env, capture_output=True, text=True, check=True)
    cli_s = time.monotonic() - started
    peak_kb, lines, last = done.stdout.split(maxsplit=2)
    engine = make_engine(url)
    with engine.begin() as connection:
        path = issue_link(connection, user, portal_key(secret.encode()), datetime.utcfromtimestamp(now)).path
        balance = int(connection.execute(sa.select(users.c.balance).where(users.c.id == user)).scalar_one())
    engine.dispose()
    assert last.split(",")[3] == str(balance), (last, balance)  # the closing balance is the ledger's
    before = _rss_kb(server_pid) / 1024
    started = time.monotonic()
    size = 0
    with httpx.stream("GET", f"{server_url}{path}/statement.csv", params={"month": month}, timeout=3600) as reply:
        assert reply.status_code == 200, reply.read()
        for part in reply.iter_bytes():
            size += len(part)
    http_s = time.monotonic() - started
    after = _rss_kb(server_pid) / 1024
    return {
        "statement rows (filled in)": f"{rows:,} ({filled:.0f} s)",
        "statement --user: time, peak RSS": f"{cli_s:.1f} s, {int(peak_kb) / 1024:.0f} MB ({int(lines):,} lines)",
        "portal statement.csv: time, server RSS before/after": f"{http_s:.1f} s, {before:.0f} / {after:.0f} MB"
        f" ({size / 2**20:.0f} MiB)",
    }
