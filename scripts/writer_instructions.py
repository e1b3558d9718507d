"""The group-commit writer's CPU instructions per event, counted by valgrind's callgrind: the one figure of
the hot path that the host's noise does not move (the same count twice, whatever else the machine does).

Each variant runs the writer alone on a fresh SQLite database over 2,080 unique events in batches of 32
(``scripts.benchkit.writer_cost_us``). Callgrind starts with its instrumentation off and counts only the
64 measured batches: the child switches it on (``callgrind_control -i on``) where the writer's own clock
starts, after the first batch has warmed the connection and the compiled statements, and off where that
clock stops. Before switching it on the child collects and freezes the heap (``gc.freeze()``, as ``serve``
does after start), so a full collection of everything imported and parsed during set-up cannot fall inside
the count. Set-up (writing, parsing the events, imports) is never counted, so nothing is subtracted.

Variants: events with a ``requestId`` (what ``make bench`` sends); seed 004's payload, without one (each
usage kept open for matching its log row); and the same while every user has a polled usage waiting for
its webhook (each batch also looks for a pair). ``--ref REV`` counts a committed revision the same way (a
git worktree, removed afterwards), side by side: the child only hooks the clock ``writer_cost_us`` reads,
so any revision whose benchmark kit has that function can be counted.

    .venv/bin/python scripts/writer_instructions.py [--ref e850494]
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

EVENTS = 2080  # one batch of 32 to warm up, then 64 measured batches of 32
MEASURED = EVENTS - 32

CHILD = """
import gc, json, os, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import scripts.benchkit as kit
events, variant = int(sys.argv[2]), sys.argv[3]

class Clock:
    '''time as the kit sees it, but its thread clock switches callgrind on (first read) and off (second).'''
    reads = 0
    def __getattr__(self, name):
        return getattr(time, name)
    def thread_time(self):
        Clock.reads += 1
        if Clock.reads == 1:
            gc.collect()
            gc.freeze()
        subprocess.run(["callgrind_control", "-i", "on" if Clock.reads == 1 else "off", str(os.getpid())],
                       check=True, capture_output=True)
        return time.thread_time()

kit.time = Clock()
work = Path(tempfile.mkdtemp())
path = kit.write_requests(work / "u.tsv", "u", events, "k", duplicates=False)
lines = []
for line in path.read_text().splitlines():
    event = json.loads(line.split("\\t", 1)[1])
    if variant != "with requestId":
        del event["data"]["requestId"]
    lines.append("-\\t" + json.dumps(event, separators=(",", ":")))
path.write_text("\\n".join(lines) + "\\n")
options = {"polled": True} if variant.endswith("open") else {}
kit.writer_cost_us(f"sqlite:///{work}/w.db", path, events=events, **options)
assert Clock.reads == 2, Clock.reads
"""
VARIANTS = ("with requestId", "no requestId, nothing polled", "no requestId, polled usages open")


def per_event(root: Path, variant: str) -> int:
    """Instructions per event of the writer in ``root``'s tree for ``variant``, its measured batches only."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as child:
        child.write(CHILD)
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
               sys.executable, child.name, str(root), str(EVENTS), variant]  # fmt: skip
    env = os.environ | {"PYTHONHASHSEED": "0"}  # the same hashes, so the same work, in every run
    try:
        output = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(child.name)
    found = re.search(r"Collected : (\d+)", output)
    if found is None:
        raise SystemExit(f"callgrind printed no count:\n{output[-2000:]}")
    return int(found.group(1)) // MEASURED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", help="also count this git revision (checked out in a temporary worktree)")
    parser.add_argument("--variant", choices=VARIANTS, action="append", help="only these (default: all)")
    args = parser.parse_args()
    variants = args.variant or VARIANTS
    with revisions(ROOT, [args.ref] if args.ref else []) as roots:
        counts = {name: {variant: per_event(root, variant) for variant in variants} for name, root in roots.items()}
    print("instructions per event, the writer's measured batches only (callgrind, SQLite, batches of 32):")
    for name, by_variant in counts.items():
        for variant, count in by_variant.items():
            base = counts["this tree"][variant]
            change = "" if name == "this tree" else f"  (this tree {base / count - 1:+.1%} against it)"
            print(f"  {name:12} {variant:34} {count:9,}{change}")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
