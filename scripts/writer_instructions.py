"""The group-commit writer's CPU instructions per event, counted by valgrind's callgrind: the one figure of
the hot path that the host's noise does not move (the same count twice, whatever else the machine does).

Each variant runs the writer alone on a fresh SQLite database twice, over 1,024 and 2,048 unique events in
batches of 32; the difference of the two counts, over 1,024, less the same difference for the set-up
alone (writing and parsing the events), is the writer's cost per event. Variants: events with a
``requestId`` (what ``make bench`` sends); seed 004's payload, without one (each usage kept open for
matching its log row); and the same while every user has a polled usage waiting for its webhook (each
batch also looks for a pair). Run it with ``--ref REV`` to count a committed revision the same way (a git
worktree), side by side.

    .venv/bin/python scripts/writer_instructions.py [--ref 575f72e]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.processes import revisions  # noqa: E402 - the checkout first on the path, as a script

EVENTS = (1056, 2080)  # 32 to warm up, then 32 or 64 batches of 32

CHILD = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from scripts.benchkit import write_requests, writer_cost_us
events, variant = int(sys.argv[2]), sys.argv[3]
work = Path(tempfile.mkdtemp())
path = write_requests(work / "u.tsv", "u", events, "k", duplicates=False)
lines = []
for line in path.read_text().splitlines():
    event = json.loads(line.split("\\t", 1)[1])
    if variant != "with requestId":
        del event["data"]["requestId"]
    lines.append("-\\t" + json.dumps(event, separators=(",", ":")))
path.write_text("\\n".join(lines) + "\\n")
if variant == "set-up only":  # what every variant does besides the batches: to subtract
    from creditrelay.schema.wire import parse_event
    [parse_event(line.split("\t", 1)[1].encode()) for line in path.read_text().splitlines()]
else:
    options = {"polled": True} if variant.endswith("open") else {}
    writer_cost_us(f"sqlite:///{work}/w.db", path, events=events, **options)
"""
VARIANTS = ("with requestId", "no requestId, nothing polled", "no requestId, polled usages open")
SETUP = "set-up only"


def instructions(root: Path, events: int, variant: str) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as child:
        child.write(CHILD)
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, child.name,
               str(root), str(events), variant]  # fmt: skip
    env = os.environ | {"PYTHONHASHSEED": "0"}  # the same hashes, so the same work, in every run
    output = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=True).stderr
    found = re.search(r"Collected : (\d+)", output)
    if found is None:
        raise SystemExit(f"callgrind printed no count:\n{output[-2000:]}")
    return int(found.group(1))


def per_event(root: Path, variant: str) -> int:
    low, high = (instructions(root, events, variant) for events in EVENTS)
    return (high - low) // (EVENTS[1] - EVENTS[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", help="also count this git revision (checked out in a temporary worktree)")
    args = parser.parse_args()
    with revisions(ROOT, [args.ref] if args.ref else []) as roots:
        counts: dict[str, dict[str, int]] = {name: {} for name in roots}
        for name, root in roots.items():
            setup = per_event(root, SETUP)  # each tree's own: parsing an event is not the writer's work
            for variant in VARIANTS if name == "this tree" else VARIANTS[:1]:
                counts[name][variant] = per_event(root, variant) - setup
    base = counts["this tree"]["with requestId"]
    print("instructions per event, the writer alone (callgrind, SQLite, batches of 32):")
    for name, variants in counts.items():
        for variant, count in variants.items():
            print(f"  {name:12} {variant:34} {count:9,}  ({count / base:.3f}x this tree with requestId)")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
