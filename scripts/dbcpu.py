"""The CPU a database server spends, read from /proc: what `make bench` divides by the events of a run.

MariaDB/MySQL is one process (``mariadbd`` or ``mysqld``): its user and system time. PostgreSQL is a
postmaster and a process per connection: the postmaster's own time, the time of its children it has
reaped (the connections that ended), and that of the children still running. SQLite runs inside the
receiver, so it has no server of its own (None).
"""

import os
import subprocess
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _times(pid: int) -> tuple[int, int]:
    """(own user+system, reaped children's user+system) of ``pid`` in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _pids(name: str) -> list[int]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in found.split()]


def server_cpu_seconds(url: str) -> float | None:
    """The database server's CPU seconds so far, for the server a SQLAlchemy URL names on this machine."""
    if url.startswith("sqlite"):
        return None
    try:
        if url.startswith("mysql"):
            pids = _pids("mariadbd") or _pids("mysqld")
            return sum(_times(pid)[0] for pid in pids) / TICKS
        postmasters = [pid for pid in _pids("postgres") if _parent(pid) not in _pids("postgres")]
        total = 0
        for postmaster in postmasters:
            own, reaped = _times(postmaster)
            total += own + reaped
            for child in _children(postmaster):
                total += _times(child)[0]
        return total / TICKS
    except (OSError, ValueError):  # a process gone between the listing and the read: no figure
        return None


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []
