"""`make run`'s script: it serves, and the curl + openssl example it prints works as printed."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scripts.processes import free_port

pytestmark = pytest.mark.slow  # each test starts the command line or a server as processes

ROOT = Path(__file__).resolve().parents[1]


def test_printed_curl_example_charges_then_is_a_duplicate(tmp_path: Path) -> None:
    """The banner's curl example, run by bash with the real openssl, is charged once and then a duplicate."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("WEBHOOK_SECRET", "DATABASE_URL")}
    command = [
        sys.executable,
        str(ROOT / "scripts" / "dev_server.py"),
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/webhooks/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the development server did not come up"
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.1)
        assert (tmp_path / "dev-webhook-secret").exists()
        banner = ""
        assert server.stdout is not None
        while not banner.rstrip().endswith('-d "$PAYLOAD"'):
            banner += server.stdout.readline()
        example = banner[banner.index("SECRET=") :]
        first = subprocess.run(["bash", "-c", example], capture_output=True, text=True, check=True)
        second = subprocess.run(["bash", "-c", example], capture_output=True, text=True, check=True)
        assert '"message":"Event processed successfully"' in first.stdout
        assert '"duplicate":true' in second.stdout
    finally:
        server.terminate()
        server.wait(10)
