"""The database server's CPU per event for the group-commit writer alone, this tree beside another revision.

    .venv/bin/python scripts/db_cost.py [--ref 575f72e] [--events 6000]

For each revision and each server database (MariaDB, PostgreSQL): the writer runs alone, in a process of
its own, over unique events with request ids in batches of 32 (``benchkit.writer_cost_us``), twice —
``--events`` and twice that many — and the server's CPU time over each run is read from /proc
(``scripts/dbcpu.py``). The difference of the two, over the difference of the events, is the server's
CPU per event, the set-up (a new database, its users) cancelled out. What the receiver's own process costs
is ``scripts/writer_instructions.py``'s figure; this is the other half of an event's cost on a host where
the database server shares the cores. Prints figures; asserts nothing.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.dbcpu import server_cpu_seconds
from scripts.processes import revisions

ROOT = Path(__file__).resolve().parents[1]
URLS = {
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/creditrelay_dbcost",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/creditrelay_dbcost",
}
CHILD = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from scripts.benchkit import write_requests, writer_cost_us
events = int(sys.argv[3])
path = write_requests(Path(tempfile.mkdtemp()) / "u.tsv", "u", events + 32, "k", duplicates=False)
writer_cost_us(sys.argv[2], path, events=events + 32)
"""


def server_cpu_of_run(root: Path, url: str, events: int) -> float:
    before = server_cpu_seconds(url)
    subprocess.run(
        [sys.executable, "-c", CHILD, str(root), url, str(events)], cwd=root, check=True, capture_output=True
    )
    after = server_cpu_seconds(url)
    assert before is not None
    assert after is not None
    return after - before


def per_event_us(root: Path, url: str, events: int, rounds: int) -> float:
    figures = []
    for _ in range(rounds):
        low, high = server_cpu_of_run(root, url, events), server_cpu_of_run(root, url, 2 * events)
        figures.append((high - low) / events * 1e6)
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", help="also measure this git revision (checked out in a temporary worktree)")
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("the database server's CPU per event, the writer alone (batches of 32, unique events with requestId):")
    with revisions(ROOT, [args.ref] if args.ref else []) as roots:
        for kind, url in URLS.items():
            for name, root in roots.items():
                try:
                    figure = f"{per_event_us(root, url, args.events, args.rounds):7.1f} µs"
                except subprocess.CalledProcessError as error:  # a revision from before this database was supported
                    figure = f"(not measured: {error.stderr.decode().strip().splitlines()[-1][:80]})"
                print(f"  {kind:10} {name:12} {figure}", flush=True)


if __name__ == "__main__":
    main()
