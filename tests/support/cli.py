"""Run the installed ``creditrelay`` command as an operator does: its own process, settings from the
environment, in a directory of its own (so nothing in the checkout, such as ``make run``'s development
secret, changes what it sees)."""

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scripts.processes import CREDITRELAY
from tests.support.database import Database


def run(
    database: Database | None,
    *args: str,
    cwd: Path | None = None,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    **more_env: str,
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("WEBHOOK_SECRET", "DATABASE_URL")}
    if database is not None:
        environ["DATABASE_URL"] = database.url.render_as_string(hide_password=False)
    environ |= dict(env or {}) | more_env
    where = cwd if cwd is not None else Path(tempfile.mkdtemp(prefix="creditrelay-cli-"))
    return subprocess.run(
        [CREDITRELAY, *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
        cwd=where,
        input=stdin,
    )


def ok(database: Database | None, *args: str, **env: str) -> Any:
    result = run(database, *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
