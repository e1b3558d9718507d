"""The walk of one usage from the socket to the commit: which of creditrelay's modules it passes, counted
by tracing a real request rather than by reading the code.

A child process serves the app ``serve`` builds (on a fresh SQLite database), sends one signed webhook to
warm it up, then traces a second one: every call made by a function of ours, on every thread (the
request's and the group-commit writer's; the writer applies its batches on its own thread, as with
``WEBHOOK_WRITER=thread``, so that one trace sees what a writer process runs). It prints, for each
thread, the modules in the order the usage first enters them, and two figures: the modules it passes,
and its hops — the calls from one of our modules into another, each counted once per pair of modules
(calling back into a module already passed counts too: that is the back-and-forth a reader has to
follow). Run it with ``--ref REV`` to walk a committed revision the same way (a git worktree), side by
side; ``docs/design.md`` quotes its output.

    .venv/bin/python scripts/usage_walk.py [--ref e850494]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.processes import revisions  # noqa: E402 - the checkout first on the path, as a script

PACKAGES = ("receiver", "billing", "schema", "sender", "creditrelay")

CHILD = r"""
import hashlib, hmac, json, os, sys, threading, time
from pathlib import Path
root = Path(sys.argv[1])
sys.path.insert(0, str(root))
work = Path(sys.argv[2])
os.environ.update(DATABASE_URL=f"sqlite:///{work}/walk.db", WEBHOOK_SECRET="walk-secret-walk-secret-walk-secret-00")
os.environ["WEBHOOK_WRITER"] = "thread"  # the writer process runs the same modules, where this trace cannot see
from scripts.benchkit import make_database
make_database(os.environ["DATABASE_URL"])
from starlette.testclient import TestClient
from creditrelay.cli.server import asgi_app

PACKAGES = tuple(sys.argv[3].split(","))
def ours(filename):
    try:
        parts = Path(filename).resolve().relative_to(root.resolve()).with_suffix("").parts
    except ValueError:
        return None
    if not parts or parts[0] not in PACKAGES or "migrations" in parts:
        return None
    return ".".join(("creditrelay",) + parts if parts[0] != "creditrelay" else parts)

walks = {}
tracing = threading.Event()
def tracer(frame, event, arg):
    if event != "call" or not tracing.is_set():
        return
    callee = ours(frame.f_code.co_filename)
    if callee is None:
        return
    thread = "writer" if threading.current_thread().name.startswith("group-commit") else "request"
    walk = walks.setdefault(thread, {"order": [], "edges": []})
    if callee not in walk["order"]:
        walk["order"].append(callee)
    caller_frame = frame.f_back
    while caller_frame is not None and ours(caller_frame.f_code.co_filename) is None:
        caller_frame = caller_frame.f_back
    caller = ours(caller_frame.f_code.co_filename) if caller_frame is not None else None
    edge = f"{caller}→{callee}".replace("creditrelay.", "")
    if caller and caller != callee and edge not in walk["edges"]:
        walk["edges"].append(edge)

def body(n):
    data = {"eventId": f"walk-{n}", "eventType": "usage", "timestamp": 1767225600 + n,
            "data": {"remoteKeyId": "1", "model": "gpt-4o-mini", "promptTokens": 120, "completionTokens": 80,
                     "totalTokens": 200, "creditCost": 3, "requestId": f"walk-req-{n}"}}
    raw = json.dumps(data, separators=(",", ":")).encode()
    signature = hmac.new(os.environ["WEBHOOK_SECRET"].encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"Content-Type": "application/json", "X-Webhook-Signature": signature}

threading.setprofile(tracer)  # before the app's threads start, so that they inherit it
sys.setprofile(tracer)
with TestClient(asgi_app()) as client:
    raw, headers = body(1)
    assert client.post("/api/webhooks/events", content=raw, headers=headers).status_code == 200
    raw, headers = body(2)
    time.sleep(1)  # the background workers' first passes (expiry, enforcement) are over: the next is seconds off
    tracing.set()
    answer = client.post("/api/webhooks/events", content=raw, headers=headers)
    tracing.clear()
    assert answer.status_code == 200, answer.text
print(json.dumps(walks))
"""


def walk(root: Path) -> dict[str, dict[str, list[str]]]:
    with tempfile.TemporaryDirectory() as work:
        child = Path(work) / "child.py"
        child.write_text(CHILD)
        command = [sys.executable, str(child), str(root), work, ",".join(PACKAGES)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "NEW_API", "GATEWAY"))}
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the walk failed at {root}:\n{done.stderr}")
        output = done.stdout
    walks: dict[str, dict[str, list[str]]] = json.loads(output.strip().splitlines()[-1])
    return walks


def report(label: str, walks: dict[str, dict[str, list[str]]], edges: bool) -> None:
    modules = {m for w in walks.values() for m in w["order"]}
    hops = sum(len(w["edges"]) for w in walks.values())
    print(f"{label}: {len(modules)} modules, {hops} hops")
    for thread, found in walks.items():
        print(f"  {thread}: " + " → ".join(m.removeprefix("creditrelay.") for m in found["order"]))
        if edges:
            print("    hops: " + ", ".join(found["edges"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="also walk this committed revision (in a temporary git worktree)")
    parser.add_argument("--hops", action="store_true", help="list each thread's hops too")
    args = parser.parse_args()
    with revisions(ROOT, [args.ref] if args.ref else []) as trees:
        for name, tree in reversed(trees.items()):  # the older revision first, this checkout last
            report("this checkout" if name == "this tree" else name, walk(tree), args.hops)


if __name__ == "__main__":
    main()
