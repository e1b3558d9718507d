"""scripts/cron: the wrapper the crontab example calls runs the real command from the install directory."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test starts the command line or a server as processes

ROOT = Path(__file__).resolve().parents[1]


def test_run_job_wrapper_runs_the_command_and_logs_it(tmp_path: Path) -> None:
    """run-job.sh finds .venv/bin/creditrelay beside it, reads .env there, and appends to logs/<job>.log."""
    install = tmp_path / "install"
    (install / "scripts" / "cron").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "cron" / "run-job.sh", install / "scripts" / "cron" / "run-job.sh")
    (install / ".venv" / "bin").mkdir(parents=True)
    (install / ".venv" / "bin" / "creditrelay").symlink_to(Path(sys.executable).with_name("creditrelay"))
    (install / ".env").write_text(f"DATABASE_URL=sqlite:///{tmp_path / 'cron.db'}\n")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    subprocess.run([str(install / "scripts" / "cron" / "run-job.sh"), "migrate"], check=True, env=env)
    subprocess.run([str(install / "scripts" / "cron" / "run-job.sh"), "cleanup"], check=True, env=env)
    log = (install / "logs" / "cleanup.log").read_text()
    assert '"deleted": 0' in log
    assert (tmp_path / "cron.db").exists()
    assert "poll" in (ROOT / "scripts" / "cron" / "crontab.example").read_text()
