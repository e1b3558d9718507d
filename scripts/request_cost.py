"""The receiver's own CPU per webhook request, end to end over HTTP, this tree beside other revisions.

    .venv/bin/python scripts/request_cost.py [--ref 575f72e] [--ref e850494] [--requests 20000]

For each revision: `creditrelay serve` on a new SQLite database, wrk sending unique signed events with
request ids over 16 connections for ``--seconds``, and the server process's CPU time (from /proc) over
the run divided by the events it answered 200. On SQLite the database works inside the receiver, so this
is everything an event costs the host but the load generator; on MySQL and PostgreSQL the server's share
is ``scripts/db_cost.py``'s. The revisions alternate ``--rounds`` times; medians. Prints figures; asserts
nothing.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchkit import program
from scripts.processes import revisions

ROOT = Path(__file__).resolve().parents[1]
SECRET = "request-cost-secret-request-cost-secret"  # noqa: S105 - a throwaway server's
TICKS = os.sysconf("SC_CLK_TCK")
REQUESTS = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from scripts.benchkit import make_database, write_requests
make_database(sys.argv[2])
write_requests(Path(sys.argv[3]), "u", int(sys.argv[4]), sys.argv[5], duplicates=False)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def one_run(root: Path, seconds: int, events: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="request-cost-"))
    url = f"sqlite:///{work}/ledger.db"
    requests = work / "u.tsv"
    subprocess.run([sys.executable, "-c", REQUESTS, str(root), url, str(requests), str(events), SECRET], cwd=root,
                   check=True, capture_output=True)  # fmt: skip
    port = 20000 + os.getpid() % 10000
    env = os.environ | {"DATABASE_URL": url, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "warning"}
    log = (work / "serve.log").open("wb")
    server = subprocess.Popen([*program(root), "serve", "--port", str(port)], cwd=root, env=env, stdout=log,
                              stderr=log)  # fmt: skip
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/webhooks/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        before = cpu_seconds(server.pid)
        script = str(ROOT / "scripts/bench/replay.lua")
        url = f"http://127.0.0.1:{port}/api/webhooks/events"
        command = ["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", script, url, "--", str(requests), "1"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            said = (work / "serve.log").read_text()[-2000:]
            raise SystemExit(f"wrk failed: {done.stdout}{done.stderr}\nthe server said: {said}")
        output = done.stdout
        spent = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait(20)
    sent = sum(int(s) - int(f) for s, f in re.findall(r"thread \d+ sent (\d+) non200 (\d+)", output))
    return spent / sent * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", action="append", default=[], help="also measure this git revision")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with revisions(ROOT, args.ref) as roots:
        figures: dict[str, list[float]] = {name: [] for name in roots}
        for _ in range(args.rounds):
            for name, root in roots.items():
                figures[name].append(one_run(root, args.seconds, args.events))
    print("the receiver's CPU per webhook request over HTTP (SQLite, unique events with requestId, wrk -c16):")
    for name, runs in figures.items():
        print(f"  {name:12} {statistics.median(runs):6.1f} µs  (rounds: {', '.join(f'{r:.0f}' for r in runs)})")


if __name__ == "__main__":
    main()
