"""Database clusters on loopback for `make chaos`: a three-node MariaDB Galera cluster and a PostgreSQL
primary with a streaming standby, each in data directories of its own under /var/tmp, on ports of its own
(the machine's own MariaDB and PostgreSQL are left alone). Root only: the servers run as ``mysql`` and
``postgres``. Every server process is started, killed and stopped by its own process id.
"""

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from scripts.tcp_proxy import TcpProxy

MARIADBD = "/usr/sbin/mariadbd"
GALERA = "/usr/lib/galera/libgalera_smm.so"
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/15/bin"))


def missing_galera() -> str | None:
    """Why a Galera cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (the nodes run as mysql)"
    for path in (MARIADBD, GALERA, "/usr/bin/rsync", "/usr/bin/wsrep_sst_rsync", "/usr/bin/mariadb-install-db"):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install mariadb-server galera-4 rsync)"
    return None


def missing_postgres() -> str | None:
    """Why a PostgreSQL primary and standby cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (the servers run as postgres)"
    for name in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
        if not (PG_BIN / name).exists():
            return f"{PG_BIN / name} is missing (apt-get install postgresql)"
    return None


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, its threads, and its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a PostgreSQL server's backends)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a server: the process, its live children and those it has reaped."""
    total = cpu_seconds(pid)
    for child in children(pid):
        with suppress(OSError, ValueError):
            total += cpu_seconds(child)
    return total


def _run_as(user: str, command: list[str]) -> None:
    subprocess.run(["runuser", "-u", user, "--", *command], check=True, capture_output=True, text=True)


def _fresh_directory(path: Path, owner: str) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    shutil.chown(path, owner, owner)
    return path


def _wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise SystemExit(f"{what} within {timeout:.0f} s")


@dataclass
class GaleraNode:
    number: int
    root: Path
    port: int
    group_port: int
    process: "subprocess.Popen[bytes] | None" = None

    @property
    def datadir(self) -> Path:
        return self.root / f"node{self.number}"

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/creditrelay_chaos"

    def status(self, name: str) -> str | None:
        """A ``wsrep_`` status variable of this node, or None when it does not answer."""
        found = subprocess.run(
            ["mariadb", "-h127.0.0.1", f"-P{self.port}", "-uroot", "-N", "-e", f"SHOW STATUS LIKE '{name}'"],
            capture_output=True, text=True, check=False, timeout=10,
        )  # fmt: skip
        return found.stdout.split("\t")[1].strip() if found.returncode == 0 and "\t" in found.stdout else None

    def synced(self) -> bool:
        return self.status("wsrep_local_state_comment") == "Synced"


@dataclass
class GaleraCluster:
    """Three ``mariadbd`` with the Galera provider, state transfers by rsync; node 1 bootstraps."""

    root: Path = Path("/var/tmp/creditrelay-galera")  # noqa: S108 - made afresh by root at each start
    base_port: int = 3341
    nodes: list[GaleraNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = [GaleraNode(n, self.root, self.base_port + n - 1, 4601 + 10 * n) for n in (1, 2, 3)]

    def start(self) -> None:
        _fresh_directory(self.root, "mysql")
        for node in self.nodes:
            _fresh_directory(node.datadir, "mysql")
        first = self.nodes[0]
        subprocess.run(["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={first.datadir}",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)  # fmt: skip
        self.start_node(first, bootstrap=True)
        for node in self.nodes[1:]:  # an empty data directory: the whole state comes by rsync (SST)
            self.start_node(node)

    def start_node(self, node: GaleraNode, *, bootstrap: bool = False, timeout: float = 180) -> None:
        """Start ``node`` and wait until it is synced with the cluster (a restarted node rejoins by state
        transfer: IST from a donor's cache, else a full SST)."""
        addresses = ",".join(f"127.0.0.1:{other.group_port}" for other in self.nodes)
        d = node.datadir
        command = [
            MARIADBD, "--no-defaults", "--user=mysql", f"--datadir={d}", f"--socket={d}/mysqld.sock",
            f"--port={node.port}", "--bind-address=127.0.0.1", f"--pid-file={d}/mysqld.pid",
            f"--log-error={d}/error.log", "--binlog-format=ROW", "--innodb-autoinc-lock-mode=2",
            "--innodb-buffer-pool-size=128M", "--max-connections=300",
            # a killed mariadbd loses nothing with 2 (the log is in the OS at each commit); Galera's own
            # durability is that a commit is on every node before it is answered
            "--innodb-flush-log-at-trx-commit=2",
            "--wsrep-on=ON", f"--wsrep-provider={GALERA}", "--wsrep-cluster-name=creditrelay_chaos",
            f"--wsrep-cluster-address=gcomm://{addresses}", f"--wsrep-node-address=127.0.0.1:{node.group_port}",
            f"--wsrep-node-name=node{node.number}", "--wsrep-sst-method=rsync",
            f"--wsrep-sst-receive-address=127.0.0.1:{node.group_port + 2}",
            f"--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{node.group_port};"
            f"ist.recv_addr=127.0.0.1:{node.group_port + 1}",
            *(["--wsrep-new-cluster"] if bootstrap else []),
        ]  # fmt: skip
        node.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(node.synced, f"node {node.number} did not sync", timeout)

    def kill(self, node: GaleraNode) -> None:
        """SIGKILL: what a crash does."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(30)
        node.process = None

    def wait_all_synced(self, timeout: float = 180) -> None:
        def same_position() -> bool:
            positions = {node.status("wsrep_last_committed") for node in self.nodes}
            return all(node.synced() for node in self.nodes) and len(positions) == 1 and None not in positions

        _wait(same_position, "the nodes did not reach one position", timeout)

    def cpu_seconds(self) -> dict[int, float]:
        return {n.number: cpu_seconds(n.process.pid) for n in self.nodes if n.process is not None}

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.process is None:
                continue
            node.process.terminate()
            try:
                node.process.wait(60)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(10)
            node.process = None


@dataclass
class PostgresServer:
    name: str
    datadir: Path
    port: int

    def postmaster_pid(self) -> int | None:
        pid_file = self.datadir / "postmaster.pid"
        with suppress(OSError, ValueError, IndexError):
            return int(pid_file.read_text().split()[0])
        return None

    def ready(self) -> bool:
        command = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(command, check=False).returncode == 0


@dataclass
class PostgresPair:
    """A primary and a standby streaming from it, synchronous (``synchronous_standby_names = '*'``: a
    commit waits for the standby's flush) or asynchronous."""

    synchronous: bool = True
    link_delay: float = 0.0  # seconds each way between the primary and the standby (a proxy in between)
    root: Path = Path("/var/tmp/creditrelay-postgres")  # noqa: S108 - made afresh by root at each start
    primary: PostgresServer = field(init=False)
    standby: PostgresServer = field(init=False)
    link: TcpProxy | None = None

    def __post_init__(self) -> None:
        self.primary = PostgresServer("primary", self.root / "primary", 5441)
        self.standby = PostgresServer("standby", self.root / "standby", 5442)

    def url(self, database: str = "creditrelay_chaos") -> str:
        """Both hosts, the one that takes writes chosen at each connection."""
        hosts = "&".join(f"host=127.0.0.1:{s.port}" for s in (self.primary, self.standby))
        return f"postgresql://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    def start(self) -> None:
        _fresh_directory(self.root, "postgres")
        _run_as("postgres", [str(PG_BIN / "initdb"), "-D", str(self.primary.datadir), "-U", "postgres",
                             "--auth=trust", "--no-sync"])  # fmt: skip
        settings = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.primary.port),
            "unix_socket_directories": f"'{self.root}'", "wal_level": "replica", "max_wal_senders": "5",
            "max_connections": "200", "shared_buffers": "128MB",
            "synchronous_standby_names": "'*'" if self.synchronous else "''",
        }  # fmt: skip
        with (self.primary.datadir / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self._pg_ctl(self.primary, "start")
        _run_as("postgres", [str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
                             "-U", "postgres", "-D", str(self.standby.datadir), "-R", "-X", "stream"])  # fmt: skip
        # Once promoted, the standby must not wait for a standby of its own that does not exist.
        standby_settings = f"port = {self.standby.port}\nsynchronous_standby_names = ''\n"
        if self.link_delay:
            self.link = TcpProxy("127.0.0.1", self.primary.port, delay=self.link_delay)
            standby_settings += f"primary_conninfo = 'host=127.0.0.1 port={self.link.port} user=postgres'\n"
        with (self.standby.datadir / "postgresql.auto.conf").open("a") as conf:
            conf.write(standby_settings)
        self._pg_ctl(self.standby, "start")
        _wait(self.streaming, "the standby did not stream", 60)

    def streaming(self) -> bool:
        query = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        found = subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.primary.port), "-U",
                                "postgres", "-Atc", query], capture_output=True, text=True, check=False)  # fmt: skip
        return found.stdout.strip() == "1"

    def _pg_ctl(self, server: PostgresServer, action: str) -> None:
        log = self.root / f"{server.name}.log"
        _run_as("postgres", [str(PG_BIN / "pg_ctl"), "-D", str(server.datadir), "-l", str(log), "-w", action])

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and every backend: the machine gone, as far as anyone can tell."""
        pid = self.primary.postmaster_pid()
        assert pid is not None
        for process in [pid, *children(pid)]:
            with suppress(ProcessLookupError):
                os.kill(process, signal.SIGKILL)

    def promote(self) -> None:
        _run_as("postgres", [str(PG_BIN / "pg_ctl"), "-D", str(self.standby.datadir), "-w", "promote"])

    def cpu_seconds(self, server: PostgresServer) -> float:
        pid = server.postmaster_pid()
        return 0.0 if pid is None else tree_cpu_seconds(pid)

    def stop(self) -> None:
        if self.link is not None:
            self.link.close()
        for server in (self.standby, self.primary):
            pid = server.postmaster_pid()
            if pid is not None and Path(f"/proc/{pid}").exists():
                with suppress(subprocess.CalledProcessError):
                    _run_as("postgres", [str(PG_BIN / "pg_ctl"), "-D", str(server.datadir), "-m", "immediate", "stop"])


@dataclass
class StandaloneMariaDB:
    """One ``mariadbd`` of its own, durable as installed (a commit is flushed to disk before it returns)."""

    root: Path = Path("/var/tmp/creditrelay-mariadb")  # noqa: S108 - made afresh by root at each start
    port: int = 3351
    process: "subprocess.Popen[bytes] | None" = None

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/creditrelay_capacity"

    def start(self) -> None:
        d = _fresh_directory(self.root, "mysql")
        subprocess.run(["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={d}",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)  # fmt: skip
        command = [MARIADBD, "--no-defaults", "--user=mysql", f"--datadir={d}", f"--socket={d}/mysqld.sock",
                   f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={d}/mysqld.pid",
                   f"--log-error={d}/error.log", "--innodb-buffer-pool-size=128M", "--max-connections=300"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ping = ["mariadb-admin", "-h127.0.0.1", f"-P{self.port}", "-uroot", "ping"]
        _wait(lambda: subprocess.run(ping, capture_output=True, check=False).returncode == 0, "MariaDB did not start",
              60)  # fmt: skip

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
            self.process = None


@dataclass
class StandalonePostgres:
    """One PostgreSQL server of its own, durable as installed (``synchronous_commit = on``, ``fsync``)."""

    root: Path = Path("/var/tmp/creditrelay-pg-capacity")  # noqa: S108 - made afresh by root at each start
    server: PostgresServer = field(init=False)

    def __post_init__(self) -> None:
        self.server = PostgresServer("capacity", self.root / "data", 5451)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.server.port}/creditrelay_capacity"

    def start(self) -> None:
        _fresh_directory(self.root, "postgres")
        _run_as("postgres", [str(PG_BIN / "initdb"), "-D", str(self.server.datadir), "-U", "postgres",
                             "--auth=trust", "--no-sync"])  # fmt: skip
        with (self.server.datadir / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.server.port}\nshared_buffers = 128MB\n"
                       f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n")  # fmt: skip
        log = self.root / "server.log"
        _run_as("postgres", [str(PG_BIN / "pg_ctl"), "-D", str(self.server.datadir), "-l", str(log), "-w", "start"])

    def cpu_seconds(self) -> float:
        pid = self.server.postmaster_pid()
        return 0.0 if pid is None else tree_cpu_seconds(pid)

    def stop(self) -> None:
        with suppress(subprocess.CalledProcessError):
            _run_as("postgres", [str(PG_BIN / "pg_ctl"), "-D", str(self.server.datadir), "-m", "fast", "stop"])
