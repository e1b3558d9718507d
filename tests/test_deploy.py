"""deploy/: the backup script really backs up (both databases) and keeps 7 days; the units run real commands."""

import gzip
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.support.database import Database

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def test_backup_script_backs_up_and_prunes(database: Database, tmp_path: Path) -> None:
    """A consistent copy of the database lands in BACKUP_DIR; backups older than KEEP_DAYS go."""
    backups = tmp_path / "backups"
    backups.mkdir()
    stale = backups / "creditrelay-20000101T000000Z.db"
    stale.write_text("old")
    old = time.time() - 10 * 86400
    os.utime(stale, (old, old))
    env = os.environ | {
        "DATABASE_URL": database.url.render_as_string(hide_password=False),
        "BACKUP_DIR": str(backups),
        "KEEP_DAYS": "7",
    }
    made = subprocess.run(
        [str(DEPLOY / "backup.sh")], env=env, capture_output=True, text=True, check=True, cwd=tmp_path
    )
    target = Path(made.stdout.strip())
    assert target.exists()
    assert not stale.exists()
    if database.kind == "sqlite":
        with sqlite3.connect(target) as copy:
            assert copy.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)
    else:
        assert b"CREATE TABLE `usage_records`" in gzip.decompress(target.read_bytes())


def test_units_and_timers_run_real_commands() -> None:
    """Every ExecStart names a creditrelay command that exists, and each timer starts an existing job."""
    help_text = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "creditrelay"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for unit in (DEPLOY / "systemd").glob("*.service"):
        for command in re.findall(r"creditrelay (\w+)", unit.read_text()):
            assert command in help_text, f"{unit.name}: creditrelay {command}"
    jobs = {"poll", "reconcile", "cleanup", "backup"}
    for timer in (DEPLOY / "systemd").glob("*.timer"):
        [job] = re.findall(r"Unit=creditrelay-job@(\w+)\.service", timer.read_text())
        assert job in jobs
    assert "backup" in (ROOT / "scripts" / "cron" / "run-job.sh").read_text()
