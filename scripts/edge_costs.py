"""What one client without credentials costs `creditrelay serve`: memory and CPU per attack (issue 29).

    .venv/bin/python scripts/edge_costs.py [--checkout DIR]

Starts `serve` on a new SQLite database (no ADMIN_TOKEN, so the sign-in form is the one any client can
post to) and, one after another: uploads 300 file parts of 1 MiB to /admin/login, sends a 20 MB URL and a
20 MB header, posts an unsigned 4 MiB batch in 1 KiB pieces, and holds 300 idle connections. For each it
prints the server's resident memory growth and CPU time (from /proc), and how long health took meanwhile.
``--checkout DIR`` runs the code of another checkout (``git worktree add DIR REF``) with this venv, to
compare. Prints figures; asserts nothing.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from scripts.processes import free_port, stop, wait_healthy

SECRET = "edge-costs-secret-edge-costs-secret-42"  # noqa: S105 - a throwaway server's
TICKS = os.sysconf("SC_CLK_TCK")


def usage(pid: int) -> tuple[float, float]:
    """The process's (resident MB, CPU seconds so far)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS")
    )
    return rss / 1024, cpu


def send_raw(port: int, data: bytes, pieces: int = 65536) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        try:
            for start in range(0, len(data), pieces):
                sock.sendall(data[start : start + pieces])
        except OSError:
            pass
        try:
            return sock.recv(200)
        except OSError as error:
            return repr(error).encode()


def attack(name: str, pid: int, port: int, work) -> None:  # type: ignore[no-untyped-def]
    rss, cpu = usage(pid)
    started = time.monotonic()
    said = work(port)
    took = time.monotonic() - started
    health_started = time.monotonic()
    health: int | str
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/api/webhooks/health", timeout=60).status_code
    except httpx.HTTPError as error:
        health = repr(error)
    health_took = time.monotonic() - health_started
    rss_after, cpu_after = usage(pid)
    print(
        f"{name:<34} {rss_after - rss:+8.1f} MB {cpu_after - cpu:8.2f} s CPU {took:7.2f} s wall"
        f"   health {health} in {health_took:.2f} s   server said {said[:60]!r}",
        flush=True,
    )


def uploads(port: int) -> bytes:
    files = {f"f{i}": (f"f{i}.bin", b"x" * (1024 * 1024)) for i in range(300)}
    reply = httpx.post(f"http://127.0.0.1:{port}/admin/login", files=files, timeout=120)
    return f"{reply.status_code}".encode()


def long_url(port: int) -> bytes:
    return send_raw(port, b"GET /" + b"a" * 20_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")


def long_header(port: int) -> bytes:
    return send_raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000_000 + b"\r\n\r\n")


def piecemeal_batch(port: int) -> bytes:
    body = b"[" + b",".join([b'{"eventId":"x"}'] * 250_000)[: 4 * 1024 * 1024 - 2] + b"]"
    head = (
        b"POST /api/webhooks/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    return send_raw(port, head + body, pieces=1024)


def idle_sockets(port: int) -> bytes:
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    time.sleep(12)  # past the 10 s the head may take
    closed = 0
    for sock in held:
        sock.setblocking(False)
        try:
            sock.recv(100)  # the 408, or the end of the stream: the server let go of it
            closed += 1
        except BlockingIOError:  # still open, nothing said
            pass
        sock.close()
    return f"{closed} of 300 closed by the server after 12 s".encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, help="run the creditrelay of this checkout instead")
    args = parser.parse_args()
    where = Path(tempfile.mkdtemp(prefix="edge-costs-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_TOKEN", "DATABASE_URL")}
    env |= {"DATABASE_URL": f"sqlite:///{where}/ledger.db", "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "warning"}
    checkout = (args.checkout or Path(__file__).resolve().parents[1]).resolve()
    command = [sys.executable, "-m", "creditrelay"]
    subprocess.run([*command, "migrate"], cwd=checkout, env=env, check=True, capture_output=True)
    log = where / "serve.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port)], cwd=checkout, env=env, stdout=sink, stderr=sink
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/webhooks/health", process, log)
        print(f"creditrelay of {checkout}, serve pid {process.pid}: {usage(process.pid)[0]:.1f} MB at start")
        attack("300 x 1 MiB uploads to /admin/login", process.pid, port, uploads)
        attack("a 20 MB URL", process.pid, port, long_url)
        attack("a 20 MB header", process.pid, port, long_header)
        attack("4 MiB unsigned batch in 1 KiB pieces", process.pid, port, piecemeal_batch)
        attack("300 idle connections", process.pid, port, idle_sockets)
    finally:
        stop(process)


if __name__ == "__main__":
    main()
