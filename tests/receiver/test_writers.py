"""The webhook writer in a process of its own (``ProcessWriter``, serve's default): batches charged once
and answered after the commit, failures carried back as what they are, and a child that dies replaced.
On every database, with real child processes."""

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url
from structlog.testing import capture_logs

from creditrelay.app import build_app, writer_processes
from creditrelay.billing.deliveries import DeliveryStatus
from creditrelay.receiver.group_commit import GroupCommitter
from creditrelay.receiver.writers import DEFAULT_DEADLINE, ProcessWriter, WriterRefused, WriterStopped
from creditrelay.schema.database import make_engine
from creditrelay.schema.errors import DatabaseUnavailable
from creditrelay.schema.wire import Event, parse_event
from creditrelay.settings import load_settings
from scripts.processes import CREDITRELAY, free_port, kill_hard, start, stop, wait_healthy
from tests.support.database import Database
from tests.support.receiver import OPENING, add_user
from tests.support.signing import SECRET, encode, seed_headers, usage_event


def event(event_id: str, cost: int = 10, key: str = "1") -> Event:
    return parse_event(encode(usage_event(event_id, cost=cost, key=key)))


@pytest.fixture
def writer(database: Database) -> Iterator[ProcessWriter]:
    process_writer = ProcessWriter(partial(make_engine, database.url))
    try:
        yield process_writer
    finally:
        process_writer.close()


def child_pid(writer: ProcessWriter) -> int:
    """The one writer process ``writer`` has waiting (not this process)."""
    pids = writer.pids()
    assert len(pids) == 1
    assert pids[0] != os.getpid()
    return pids[0]


def test_start_has_the_writer_processes_running_before_the_first_batch(database: Database) -> None:
    """``start`` (called as the app is built) spawns one process per writer thread; batches then use them
    rather than starting more."""
    writer = ProcessWriter(partial(make_engine, database.url))
    try:
        writer.start(2)
        started = sorted(writer.pids())
        assert len(started) == 2
        writer.probe()
        writer.probe()
        assert sorted(writer.pids()) == started
    finally:
        writer.close()


def test_a_batch_is_charged_once_in_the_writer_process(database: Database, writer: ProcessWriter) -> None:
    """Outcomes come back in order, after the commit: an id given twice in the batch and again later is
    charged once, and the balance on disk has moved when ``deliver`` returns."""
    add_user(database.engine)
    outcomes = writer.deliver([event("p-1"), event("p-2", cost=5), event("p-1")])
    assert [o.status for o in outcomes] == [DeliveryStatus.CHARGED, DeliveryStatus.CHARGED, DeliveryStatus.DUPLICATE]
    assert database.scalar("SELECT balance FROM users") == OPENING - 15
    again = writer.deliver([event("p-1"), event("p-3", key="999")])
    assert [o.status for o in again] == [DeliveryStatus.DUPLICATE, DeliveryStatus.UNBILLABLE]
    assert "unknown remoteKeyId 999" in (again[1].error or "")
    assert database.scalar("SELECT COUNT(*) FROM usage_records") == 2
    child_pid(writer)  # it ran in a child, not here


def test_a_child_that_ended_between_batches_is_started_again(database: Database, writer: ProcessWriter) -> None:
    """A writer process killed while idle is replaced before the next batch, which is charged."""
    add_user(database.engine)
    writer.probe()
    first = child_pid(writer)
    os.kill(first, signal.SIGKILL)
    _wait_ended(first)
    with capture_logs() as logs:
        assert writer.deliver([event("q-1")])[0].status is DeliveryStatus.CHARGED
    assert child_pid(writer) != first
    assert [line["event"] for line in logs] == ["writer_process_restarted"]
    assert database.scalar("SELECT balance FROM users") == OPENING - 10


def test_a_child_that_dies_holding_a_batch_fails_it_as_unknown(database: Database, writer: ProcessWriter) -> None:
    """The batch in flight when its writer process dies is answered ``WriterStopped`` (503: it may or may
    not have committed); the next batch goes to a new process, and the event sent again is charged once."""
    add_user(database.engine)
    writer.probe()
    pid = child_pid(writer)
    os.kill(pid, signal.SIGSTOP)  # the batch waits in the pipe until the process is killed
    killer = _kill_once_taken(writer, pid)
    with pytest.raises(WriterStopped) as stopped:
        writer.deliver([event("r-1")])
    killer.join()
    assert stopped.value.status_code == 503
    assert writer.deliver([event("r-1")])[0].status is DeliveryStatus.CHARGED
    assert database.scalar("SELECT balance FROM users") == OPENING - 10


def test_a_child_that_holds_a_batch_past_the_deadline_is_killed(database: Database) -> None:
    """A writer process that does not answer (here stopped, as a cgroup freezes it or a silent database
    host holds it) is killed by the watchdog at the deadline: its batch is answered ``WriterStopped`` naming
    the deadline (503, and the writer free for the next batch), the next batch goes to a new process, and
    the event sent again is charged once."""
    add_user(database.engine)
    writer = ProcessWriter(partial(make_engine, database.url))
    pid = 0
    try:
        writer.probe()  # under the default deadline: the process's start (imports) counts in the first
        pid = child_pid(writer)
        writer.deadline = 1.0
        os.kill(pid, signal.SIGSTOP)
        pool = ThreadPoolExecutor(1)
        with capture_logs() as logs:
            answer = pool.submit(writer.deliver, [event("h-1")])
            try:
                error = answer.exception(timeout=60)  # without a watchdog: TimeoutError
            finally:
                pool.shutdown(wait=False)
        assert isinstance(error, WriterStopped)
        assert str(error) == f"the writer process {pid} did not answer within 1 s"
        assert {"event": "writer_process_hung", "pid": pid, "seconds": 1.0, "log_level": "error"} in logs
        _wait_ended(pid)
        writer.deadline = DEFAULT_DEADLINE  # the new process's start counts in its first batch's time
        assert writer.deliver([event("h-1")])[0].status is DeliveryStatus.CHARGED
        assert child_pid(writer) != pid
    finally:
        if pid and _state(pid) == "T":  # a broken watchdog leaves it stopped: pytest would wait at exit
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        writer.close()
    assert database.scalar("SELECT balance FROM users") == OPENING - 10


def test_serve_gives_its_writer_processes_a_deadline_past_the_lock_timeout(tmp_path: Path) -> None:
    """The deadline follows DATABASE_LOCK_TIMEOUT: 80 s at the default 5 s, 180 s at 30 s (the database
    does not matter: once, on SQLite)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    for lock_timeout, deadline in (("5", 80.0), ("30", 180.0)):
        environ = {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": url, "WEBHOOK_WRITER": "process"}
        settings = load_settings(environ | {"DATABASE_LOCK_TIMEOUT": lock_timeout}, env_file=None, dev_secret_file=None)
        writer = build_app(settings).state.webhooks.ingestor.writer
        try:
            assert isinstance(writer, ProcessWriter)
            assert writer.deadline == deadline
        finally:
            writer.close()


def test_a_batch_whose_process_dies_fails_whole_and_is_not_split(database: Database, writer: ProcessWriter) -> None:
    """Through the group committer: a batch of three held by a process that dies is answered unavailable
    (503) for all three at once — not split into a process started per event — and sent again, each event
    is charged once."""
    add_user(database.engine)
    writer.probe()
    pid = child_pid(writer)
    committer = GroupCommitter(writer.deliver)
    batch = [event("u-1"), event("u-2"), event("u-3")]
    os.kill(pid, signal.SIGSTOP)
    killer = _kill_once_taken(writer, pid)
    outcomes = committer.apply_isolated(batch)
    killer.join()
    assert len(outcomes) == 3
    assert all(isinstance(outcome, WriterStopped) for outcome in outcomes)
    assert writer.pids() == []  # no process was started for the events one by one
    again = committer.apply_isolated(batch)
    assert [o.status for o in again if not isinstance(o, Exception)] == [DeliveryStatus.CHARGED] * 3
    assert database.scalar("SELECT balance FROM users") == OPENING - 30


def _kill_once_taken(writer: ProcessWriter, pid: int) -> threading.Thread:
    """SIGKILL ``pid`` as soon as a batch has taken it from the idle ones (a thread, started)."""

    def kill() -> None:
        deadline = time.monotonic() + 10
        while pid in writer.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the batch is on its way down the pipe; the stopped process cannot read it
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    return killer


def test_a_failed_batch_comes_back_with_what_failed_it(tmp_path: Path) -> None:
    """An error in the writer process (here: a database without creditrelay's tables) is raised in the
    worker naming it — a statement the database refused as ``WriterRefused``, answered as such a refusal
    is on a thread — and the process goes on to the next batch."""
    writer = ProcessWriter(partial(make_engine, make_url(f"sqlite:///{tmp_path / 'empty.db'}")))
    try:
        with pytest.raises(WriterRefused, match="no such table"):
            writer.deliver([event("s-1")])
        pid = child_pid(writer)
        with pytest.raises(WriterRefused, match="no such table"):
            writer.probe()  # its UPDATE finds no table either, in the same process
        assert child_pid(writer) == pid
    finally:
        writer.close()


@pytest.mark.parametrize("scheme", ["mysql+pymysql://root", "postgresql+psycopg://postgres"])
def test_an_unreachable_database_is_database_unavailable(scheme: str) -> None:
    """A database that does not answer is ``DatabaseUnavailable`` in the worker (503), for batches and
    for health's probe alike."""
    writer = ProcessWriter(partial(make_engine, make_url(f"{scheme}@127.0.0.1:{free_port()}/nowhere")))
    try:
        with pytest.raises(DatabaseUnavailable):
            writer.deliver([event("t-1")])
        with pytest.raises(DatabaseUnavailable):
            writer.probe()
    finally:
        writer.close()


def test_serve_writes_in_a_process_of_its_own_and_replaces_it(database: Database, tmp_path: Path) -> None:
    """`serve` with WEBHOOK_WRITER=process: the worker starts a writer process per writer thread, the charge is
    made there; killed, the children are replaced and the next event is charged. With WEBHOOK_WRITER=thread
    the worker has no such child."""
    add_user(database.engine)
    url = database.url.render_as_string(hide_password=False)
    writers = 1 if database.kind == "sqlite" else 2
    for mode, expect_child in (("process", True), ("thread", False)):
        port = free_port()
        env = {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": url, "WEBHOOK_WRITER": mode}
        server = start(["serve", "--port", str(port)], env, tmp_path / "serve.log")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(f"{base}/api/webhooks/health", server, tmp_path / "serve.log")
            with httpx.Client(base_url=base, timeout=30) as client:
                children = _writer_children(server.pid)  # one per writer thread, started with the app
                assert len(children) == (writers if expect_child else 0)
                assert _post(client, f"{mode}-1").status_code == 200
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                    _wait_ended(pid)
                assert _post(client, f"{mode}-2").status_code == 200
                assert client.get("/api/webhooks/health").status_code == 200
                replaced = _writer_children(server.pid)  # as many as the batches since needed
                assert bool(replaced) is expect_child
                assert not set(replaced) & set(children)
        finally:
            stop(server)
    assert database.scalar("SELECT balance FROM users") == OPENING - 4 * 15


def _post(client: httpx.Client, event_id: str) -> httpx.Response:
    body = encode(usage_event(event_id))
    return client.post("/api/webhooks/events", content=body, headers=seed_headers(body))


def _writer_children(pid: int) -> list[int]:
    """The spawned writer processes under ``pid`` (not multiprocessing's resource tracker)."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def _wait_ended(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        assert time.monotonic() < deadline, f"process {pid} did not end"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.mark.parametrize(
    ("mode", "cpus", "workers", "expected"),
    [
        ("auto", 2, 1, True),
        ("auto", 1, 1, False),
        ("auto", 2, 2, False),
        ("auto", 4, 2, True),
        ("process", 1, 1, True),
        ("thread", 2, 1, False),
    ],
)
def test_auto_writes_in_processes_only_where_cpus_outnumber_workers(
    mode: str, cpus: int, workers: int, expected: bool
) -> None:
    """WEBHOOK_WRITER=auto (unset): writer processes when the CPUs outnumber serve's workers; where the
    workers fill them, a writer process would only add a hand-off and memory. process and thread are what
    they say."""
    settings = load_settings({"WEBHOOK_SECRET": SECRET, "WEBHOOK_WRITER": mode}, env_file=None, dev_secret_file=None)
    assert writer_processes(settings, cpus, workers) is expected


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not Path("/usr/bin/taskset").exists(), reason="one CPU")
def test_serve_pinned_to_one_cpu_writes_on_its_threads(database: Database, tmp_path: Path) -> None:
    """`serve` under `taskset -c 0` with WEBHOOK_WRITER unset starts no writer process, and charges."""
    add_user(database.engine)
    port = free_port()
    env = os.environ | {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": database.url.render_as_string(hide_password=False)}
    env.pop("WEBHOOK_WRITER", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            ["taskset", "-c", "0", CREDITRELAY, "serve", "--port", str(port)], env=env, stdout=sink, stderr=sink
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/webhooks/health", server, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert _post(client, "pinned-1").status_code == 200
        assert _writer_children(server.pid) == []
    finally:
        stop(server)
    assert '"webhook_writer": "thread"' in log.read_text()  # what serve decided, in its starting line
    assert database.scalar("SELECT balance FROM users") == OPENING - 15


def test_writer_processes_end_when_serve_is_killed(database: Database, tmp_path: Path) -> None:
    """`kill -9` of `serve` leaves no writer process behind: each leaves its loop when its pipe closes."""
    port = free_port()
    env = {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": database.url.render_as_string(hide_password=False)}
    server = start(["serve", "--port", str(port)], env | {"WEBHOOK_WRITER": "process"}, tmp_path / "serve.log")
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/webhooks/health", server, tmp_path / "serve.log")
        children = _writer_children(server.pid)
        assert children
    finally:
        kill_hard(server)
    for pid in children:
        _wait_ended(pid)
