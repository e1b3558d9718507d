"""Where the group commit's batches are applied: on the writer thread itself (``ThreadWriter``), or in a
process of the writer thread's own (``ProcessWriter``, what ``serve`` runs unless ``WEBHOOK_WRITER=thread``).

One uvicorn worker is one interpreter: HTTP parsing, the route and a writer thread take turns on its lock,
so billing's work for a batch (and PyMySQL's protocol) and the next requests' HTTP wait for each other
while the machine's other core has time to spare. A ``ProcessWriter`` keeps a child process per writer
thread, started as the app is built (a start under load would hold the first batches for the half second
a child takes to import), each with a pipe: a thread takes an idle child, sends the batch's parsed events
and waits, without the lock, until the child answers with their outcomes after its commit. A 200 still
means the charge is on disk: the request is answered only with the child's answer
(docs/decisions/0037-the-writer-in-a-process-of-its-own.md).

The child is spawned (nothing of the worker's threads, sockets or connections is copied into it), opens the
ledger with the function it is given (``creditrelay.app.open_ledger``, so its rules are the settings'),
applies each batch with a ``ThreadWriter`` of its own, and ends when its pipe closes: the worker exited or
died. What fails a batch comes back as a value: ``DatabaseUnavailable`` as itself (503); anything else as
``WriterFailed`` with the child's message, which the group committer treats as it treats a failure on a
thread (it splits the batch, so only the failing event fails). A child that dies (killed, out of memory)
fails the batch in flight with ``WriterStopped``, a ``DatabaseUnavailable`` (503 for the whole batch: its
events may or may not have committed, and a retry is answered as a duplicate if they did); a new child is
started for the next batch. So does a child that holds a batch past ``deadline`` (stopped, or waiting on a
database host that went silent without closing the connection): a watchdog kills it and ends the worker's
side of its socket, so the writer is free for the next batch and the batch's requests are answered.
"""

import contextlib
import gc
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from typing import Protocol, TextIO

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from creditrelay.billing.deliveries import DeliveryOutcome, deliver
from creditrelay.schema.database import DEFAULT_LOCK_TIMEOUT, utc
from creditrelay.schema.errors import DatabaseUnavailable
from creditrelay.schema.tables import webhook_logs
from creditrelay.schema.transactions import connect, run_transaction
from creditrelay.schema.wire import Event

log = structlog.get_logger()

# an UPDATE that matches no row: it needs what any commit of a delivery needs (SQLite's write lock,
# MySQL's global intention lock, which FLUSH TABLES WITH READ LOCK holds back, a PostgreSQL server that is
# not read-only), waits for locks no longer than the lock timeout, and changes nothing
_NOTHING = webhook_logs.update().where(webhook_logs.c.id == 0).values(status=webhook_logs.c.status)


class Writer(Protocol):
    """Applies a batch in one transaction and returns after the commit; called on a writer thread."""

    def start(self, count: int) -> None:
        """Be ready for ``count`` writer threads (called once, as the app is built)."""

    def deliver(self, events: Sequence[Event]) -> list[DeliveryOutcome]: ...

    def probe(self) -> None:
        """A write transaction that writes nothing, where the batches are written (health)."""


class WriterFailed(Exception):
    """A batch failed in the writer process; the message is what failed it there."""


class WriterRefused(WriterFailed, SQLAlchemyError):
    """The database refused a batch's statement in the writer process: answered as such a refusal is on a
    thread (500, "the database refused this request")."""


class WriterStopped(DatabaseUnavailable):
    """The writer process ended (or could not start) while a batch waited for it. Handled as the database
    being unavailable — 503 with ``Retry-After`` for the whole batch, never split into a process per event —
    except that the batch may have committed before the process ended: a retry is then answered as a
    duplicate."""

    @property
    def public_message(self) -> str:
        return "The webhook writer stopped; retry (an event that was recorded is answered as a duplicate)"


class ThreadWriter:
    """Each writer thread applies its batches on a connection of its own, in this process."""

    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock
        self._local = threading.local()

    def start(self, count: int) -> None:
        """Nothing to start: each thread connects at its first batch."""

    def deliver(self, events: Sequence[Event]) -> list[DeliveryOutcome]:
        return deliver(self._connection(), events, utc(self.clock()))

    def probe(self) -> None:
        run_transaction(self._connection(), lambda c: c.execute(_NOTHING), attempts=1)

    def _connection(self) -> Connection:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed:
            connection = self._local.connection = connect(self.engine)
        return connection


@dataclass(frozen=True)
class _Failure:
    """What the child answers instead of outcomes when a batch failed there."""

    error: type[Exception]  # raised in the worker: DatabaseUnavailable, WriterRefused or WriterFailed
    message: str


@dataclass(eq=False)
class _Child:
    process: BaseProcess
    pipe: Pipe
    hung: bool = False  # killed by the watchdog: it held a batch past the deadline


def _stop(child: _Child) -> None:
    """Kill a child that holds a batch past its deadline, and end our side of its socket too: a process
    that the kill does not reach at once (in an uninterruptible wait on a stalled disk) would otherwise
    keep the asking thread waiting. The thread then sees the end of the stream and answers the batch."""
    with contextlib.suppress(OSError):
        child.process.kill()
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(child.pipe.fileno())) as ours:
        ours.shutdown(socket.SHUT_RDWR)


def deadline_for(lock_timeout: float) -> float:
    """Seconds after which a writer process holding a batch is taken for stuck: four lock timeouts and 60 s,
    80 s at the default 5 s. A rule of thumb, not a bound: a batch takes at most two transactions
    (``deliveries.deliver``'s second pass), each giving up at its second lock wait past the lock timeout
    and connecting at most five times (5 s to reach the server) while the database is away, and its own
    work is well under a second; waits that end just inside the lock timeout, or a commit the server holds
    up (an fsync stall), can still take longer. Being wrong costs a 503 for a batch that would have
    committed (its retry is answered as a duplicate), never a charge. Senders give up sooner (10 s); what
    the deadline frees is the writer, which otherwise takes no batch again."""
    return 4 * lock_timeout + 60


DEFAULT_DEADLINE = deadline_for(DEFAULT_LOCK_TIMEOUT)


class ProcessWriter:
    """Batches applied by writer processes, one per writer thread at a time (see the module)."""

    def __init__(
        self, open_engine: Callable[[], Engine], log_level: str = "info", *, deadline: float = DEFAULT_DEADLINE
    ) -> None:
        """``deadline``: the seconds a child may hold a batch before the watchdog kills it
        (``deadline_for``)."""
        self.open_engine = open_engine  # pickled into the child: a module-level function, or a partial of one
        self.log_level = log_level
        self.deadline = deadline
        self._context = multiprocessing.get_context("spawn")
        self._idle: list[_Child] = []  # the children no thread holds now
        self._held: dict[_Child, float] = {}  # the children holding a batch, and when each must answer by
        self._lock = threading.Lock()
        self._watching: threading.Thread | None = None
        self._closed = False

    def start(self, count: int) -> None:
        """Start ``count`` writer processes now (each takes about half a second to import and open the
        ledger), so that the first batches under load do not wait for one."""
        try:
            children = [self._spawn() for _ in range(count - len(self._idle))]
        except WriterStopped:  # logged; the first batch tries again
            return
        with self._lock:
            self._idle += children

    def deliver(self, events: Sequence[Event]) -> list[DeliveryOutcome]:
        outcomes = self._ask("deliver", list(events))
        assert outcomes is not None  # a batch's answer is its outcomes, or raised
        return outcomes

    def probe(self) -> None:
        self._ask("probe", [])

    def pids(self) -> list[int]:
        """The process ids of the children waiting for a batch."""
        with self._lock:
            return [child.process.pid for child in self._idle if child.process.is_alive() and child.process.pid]

    def close(self) -> None:
        """End every child: its pipe closes and it leaves its loop (a child holding a batch, when the batch
        is answered)."""
        with self._lock:
            self._closed, children, self._idle = True, self._idle, []
        for child in children:
            child.pipe.close()
        for child in children:
            child.process.join(10)
            if child.process.is_alive():
                child.process.kill()
                child.process.join()

    def _ask(self, kind: str, events: list[Event]) -> list[DeliveryOutcome] | None:
        child = self._take()
        with self._lock:
            self._held[child] = time.monotonic() + self.deadline
        self._watch()
        try:
            child.pipe.send((kind, events))
            answer: list[DeliveryOutcome] | _Failure | None = child.pipe.recv()
        except (EOFError, OSError) as error:
            child.pipe.close()
            child.process.join(5)
            if child.hung:
                raise WriterStopped(
                    f"the writer process {child.process.pid} did not answer within {self.deadline:g} s"
                ) from None
            log.error("writer_process_stopped", pid=child.process.pid, exitcode=child.process.exitcode)
            raise WriterStopped(f"the writer process {child.process.pid} stopped: {error!r}") from None
        finally:
            with self._lock:
                self._held.pop(child, None)
                reuse = not self._closed and not child.hung and not child.pipe.closed
                if reuse:
                    self._idle.append(child)
        if not reuse:
            child.pipe.close()  # closed, or killed as it answered: the answer stands, the process does not
        if isinstance(answer, _Failure):
            raise answer.error(answer.message)
        return answer

    def _watch(self) -> None:
        """Start the watchdog, once: a daemon thread that kills a child holding a batch past its deadline."""
        if self._watching is None:
            with self._lock:
                if self._watching is None:
                    self._watching = threading.Thread(target=self._watchdog, name="writer-watchdog", daemon=True)
                    self._watching.start()

    def _watchdog(self) -> None:
        while not self._closed:
            time.sleep(min(1.0, self.deadline / 4))
            with self._lock:  # under the lock: a child that answered meanwhile is no longer held
                now, overdue = time.monotonic(), []
                for child, by in self._held.items():
                    if by < now and not child.hung:
                        child.hung = True
                        _stop(child)
                        overdue.append(child.process.pid)
            for pid in overdue:
                log.error("writer_process_hung", pid=pid, seconds=self.deadline)

    def _take(self) -> _Child:
        """A child no thread holds, started (again) when there is none or the one there was has ended."""
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.process.is_alive():
                    return child
                child.pipe.close()  # ended between batches: nothing of ours was in it
                log.warning("writer_process_restarted", pid=child.process.pid, exitcode=child.process.exitcode)
        return self._spawn()

    def _spawn(self) -> _Child:
        try:
            ours, theirs = self._context.Pipe()
        except OSError as error:  # no descriptors left
            log.error("writer_process_not_started", error=repr(error))
            raise WriterStopped(f"the writer process could not start: {error!r}") from None
        process = self._context.Process(
            target=serve_batches,
            args=(theirs, self.open_engine, self.log_level),
            name="creditrelay-writer",
            daemon=True,
        )
        try:
            with _std_streams_flush_quietly():
                process.start()
        except OSError as error:  # no process to be had (a limit on processes, no memory)
            ours.close()
            log.error("writer_process_not_started", error=repr(error))
            raise WriterStopped(f"the writer process could not start: {error!r}") from None
        finally:
            theirs.close()  # the child holds its end: when it ends, our recv sees EOF
        return _Child(process, ours)


class _QuietFlush:
    """A stream whose ``flush`` ignores a pipe that nobody reads any more."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.flush()


@contextlib.contextmanager
def _std_streams_flush_quietly() -> Iterator[None]:
    """multiprocessing flushes stdout and stderr before it starts a process, and raises when one is a pipe
    whose reader went away (a log shipper gone; what was in it is lost with the pipe): for that moment a
    failed flush of either is ignored (lines written meanwhile still go to the stream)."""
    with _SWAPPING:  # two writer threads starting processes at once would restore each other's wrapper
        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = (_QuietFlush(s) if s is not None else None for s in streams)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = streams


_SWAPPING = threading.Lock()


def serve_batches(pipe: Pipe, open_engine: Callable[[], Engine], log_level: str) -> None:
    """The child's loop: a batch in, its outcomes (or ``_Failure``) out, until the pipe closes."""
    from creditrelay.receiver.logs import configure_logging

    # Ctrl-C (and systemd's stop under its default KillMode=control-group) reach the whole group: the child
    # ends when the worker closes its pipe, after the worker has answered the batches in flight
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(log_level)
    writer = ThreadWriter(open_engine(), time.time)
    gc.collect()
    gc.freeze()  # as serve does after start: what is loaded lives as long as the process
    while True:
        try:
            kind, events = pipe.recv()
        except (EOFError, OSError):
            return
        except Exception as error:  # a message that does not unpickle: answered, the loop goes on
            log.error("writer_message_unreadable", exc_info=True)
            kind, events = "unreadable", [error]
        answer: list[DeliveryOutcome] | _Failure | None = None
        try:
            if kind == "unreadable":
                raise events[0]
            if kind == "deliver":
                answer = writer.deliver(events)
            else:
                writer.probe()
        except DatabaseUnavailable as error:
            answer = _Failure(DatabaseUnavailable, str(error))
        except Exception as error:  # a batch's failure goes back to the worker; the loop goes on
            log.warning("writer_batch_failed", size=len(events), exc_info=True)  # the traceback is only here
            answer = _Failure(WriterRefused if isinstance(error, SQLAlchemyError) else WriterFailed, repr(error))
        try:
            pipe.send(answer)
        except OSError:
            return
        except Exception as error:  # an answer that does not pickle: say so instead
            log.error("writer_answer_unsendable", exc_info=True)
            pipe.send(_Failure(WriterFailed, repr(error)))
