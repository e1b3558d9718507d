"""The `creditrelay` console script as a real process: start it, wait for it, kill it like an operator would."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

CREDITRELAY = str(Path(sys.executable).with_name("creditrelay"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if k not in ("WEBHOOK_SECRET", "DATABASE_URL")} | env
    with log.open("ab") as sink:
        return subprocess.Popen([CREDITRELAY, *args], stdout=sink, stderr=subprocess.STDOUT, env=environ)


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no clean-up, no flush — what a crash or the OOM killer does."""
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            kill_hard(process)


@contextmanager
def revisions(root: Path, refs: Sequence[str]) -> Iterator[dict[str, Path]]:
    """``{"this tree": root}`` and each of ``refs`` checked out in a temporary git worktree, side by side;
    the worktrees are removed (files and git's record of them) when the block ends, however it ends."""
    trees = {"this tree": root}
    try:
        for ref in refs:
            tree = Path(tempfile.mkdtemp(prefix="creditrelay-ref-"))
            trees[ref] = tree
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], cwd=root, check=True,
                           capture_output=True)  # fmt: skip
        yield trees
    finally:
        for ref in refs:
            if ref in trees:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees[ref])], cwd=root, check=False,
                               capture_output=True)  # fmt: skip
                shutil.rmtree(trees[ref], ignore_errors=True)
