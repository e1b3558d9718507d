"""The database server's CPU per event for the group-commit writer alone, this tree beside another revision.

    .venv/bin/python scripts/db_cost.py [--ref 575f72e] [--events 6000]

For each server database (MariaDB, PostgreSQL) a server of its own is started (``scripts/clusters.py``:
under /var/tmp, durable as installed), so that nothing else on the machine — tests, another project's
queries — is counted. For each revision the writer runs alone, in a process of its own, over unique events
with request ids in batches of 32 (``benchkit.writer_cost_us``), twice — ``--events`` and twice that many —
and the server's CPU time over each run is read from /proc. The difference of the two, over the difference
of the events, is the server's CPU per event, the set-up (a new database, its users) cancelled out. What the
receiver's own process costs is ``scripts/writer_instructions.py``'s figure; this is the other half of an
event's cost on a host where the database server shares the cores. Prints figures; asserts nothing. Root
only (the servers run as their system users).
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.clusters import StandaloneMariaDB, StandalonePostgres, missing_postgres
from scripts.processes import revisions

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from scripts.benchkit import write_requests, writer_cost_us
events = int(sys.argv[3])
path = write_requests(Path(tempfile.mkdtemp()) / "u.tsv", "u", events + 32, "k", duplicates=False)
writer_cost_us(sys.argv[2], path, events=events + 32)
"""


Server = StandaloneMariaDB | StandalonePostgres


def server_cpu_of_run(root: Path, server: Server, events: int) -> float:
    before = server.cpu_seconds()
    subprocess.run(
        [sys.executable, "-c", CHILD, str(root), server.url, str(events)], cwd=root, check=True, capture_output=True
    )
    return server.cpu_seconds() - before


def per_event_us(root: Path, server: Server, events: int, rounds: int) -> float:
    figures = []
    for _ in range(rounds):
        low, high = server_cpu_of_run(root, server, events), server_cpu_of_run(root, server, 2 * events)
        figures.append((high - low) / events * 1e6)
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", help="also measure this git revision (checked out in a temporary worktree)")
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("the database server's CPU per event, the writer alone (batches of 32, unique events with requestId):")
    if (missing := missing_postgres()) is not None:
        sys.exit(f"db_cost needs its own servers: {missing}")
    with revisions(ROOT, [args.ref] if args.ref else []) as roots:
        for kind, server in (("mariadb", StandaloneMariaDB()), ("postgresql", StandalonePostgres())):
            server.start()
            try:
                for name, root in roots.items():
                    try:
                        figure = f"{per_event_us(root, server, args.events, args.rounds):7.1f} µs"
                    except subprocess.CalledProcessError as error:  # a revision from before this database
                        figure = f"(not measured: {error.stderr.decode().strip().splitlines()[-1][:80]})"
                    print(f"  {kind:10} {name:12} {figure}", flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
