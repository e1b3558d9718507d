"""deploy/: the backup script really backs up (every database) and keeps 7 days; the units run real commands."""

import gzip
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

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
    elif database.kind == "mysql":
        assert b"CREATE TABLE `usage_records`" in gzip.decompress(target.read_bytes())
    else:
        dump = gzip.decompress(target.read_bytes())
        assert b"CREATE TABLE public.usage_records" in dump
        _restores_on_postgresql(database, dump)


def _restores_on_postgresql(database: Database, dump: bytes) -> None:
    """The dump, fed to psql as the docs say, makes a database at the same revision."""
    import sqlalchemy as sa

    name = f"{database.url.database}_restored"
    admin = sa.create_engine(database.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = database.url
        env = os.environ | {"PGPASSWORD": url.password or ""}
        target = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres", name]
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", *target], input=dump, env=env, check=True, capture_output=True
        )
        restored = subprocess.run(["psql", "-tA", "-c", "SELECT version_num FROM alembic_version", *target], env=env,
                                  check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        assert restored == database.scalar("SELECT version_num FROM alembic_version")
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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


@pytest.mark.slow
def test_the_installed_package_is_one_namespace_and_runs_from_anywhere(tmp_path: Path) -> None:
    """A non-editable install (what the Dockerfile does) puts the project under ``creditrelay`` and seed
    001's ``credit_sync_client`` only — no top-level ``schema`` or ``sender`` to shadow another package —
    and the installed command and SDK work from a directory that is not the checkout."""
    import sys
    import zipfile

    source = tmp_path / "source"  # a copy of what git tracks: the build leaves nothing in the checkout
    for name in subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(
        b"\0"
    ):
        if name and not name.startswith((b"tests/", b"docs/")):
            origin, copy = ROOT / name.decode(), source / name.decode()
            copy.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_symlink():
                copy.symlink_to(os.readlink(origin))
            elif origin.is_file():
                copy.write_bytes(origin.read_bytes())
    pip = [sys.executable, "-m", "pip", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path), str(source)], check=True)
    (wheel,) = tmp_path.glob("creditrelay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("creditrelay-")}
    assert tops == {"creditrelay", "credit_sync_client.py"}
    assert "creditrelay/schema/migrations/versions/0001_initial_schema.py" in names
    assert "creditrelay/receiver/templates/admin/base.html" in names
    assert "creditrelay/receiver/static/admin.css" in names
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import credit_sync_client, creditrelay.receiver.app, creditrelay.schema.migrate as m; print(m.head_revision())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=elsewhere, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip()


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.postgres.yml"])
def test_each_compose_file_points_creditrelay_at_its_database_once_healthy(name: str) -> None:
    """Not built here (no Docker engine, decision 0021), but read: the database URL is one creditrelay
    accepts and names the compose file's database service, which has a health check creditrelay waits for."""
    import yaml

    from creditrelay.settings import parse_database_url

    compose = yaml.safe_load((DEPLOY / name).read_text())
    app = compose["services"]["creditrelay"]
    url = parse_database_url(re.sub(r"\$\{\w+\}", "secret", app["environment"]["DATABASE_URL"]))
    assert url.host in compose["services"]
    assert app["depends_on"] == {url.host: {"condition": "service_healthy"}}
    assert compose["services"][url.host]["healthcheck"]["test"]
