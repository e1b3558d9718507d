"""A TCP proxy the tests can cut, so a real database server looks stopped to the code under test; and
that can hold what it forwards for a while, as a link to another site would (a standby far away)."""

import contextlib
import queue
import socket
import threading
import time
from types import TracebackType


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` drops every connection and refuses new ones. With
    ``delay``, every byte arrives that many seconds after it was sent, each way (throughput unchanged)."""

    def __init__(self, target_host: str, target_port: int, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        if self.delay:
            self._pump_later(source, sink)
            return
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def _pump_later(self, source: socket.socket, sink: socket.socket) -> None:
        """A delay line: chunks are read as they come and each is sent ``delay`` seconds after it was read."""
        line: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def send() -> None:
            try:
                while chunk := (item := line.get())[1]:
                    time.sleep(max(0.0, item[0] - time.monotonic()))
                    sink.sendall(chunk)
            except OSError:
                pass
            finally:
                self._drop(source, sink)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            while chunk := source.recv(65536):
                line.put((time.monotonic() + self.delay, chunk))
        except OSError:
            pass
        finally:
            line.put((0.0, b""))

    def _drop(self, *sockets: socket.socket) -> None:
        with self.lock:
            for s in sockets:
                self.open.discard(s)
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        self.cut_off.set()
        with self.lock:
            doomed = list(self.open)
        self._drop(*doomed)

    def restore(self) -> None:
        self.cut_off.clear()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()
