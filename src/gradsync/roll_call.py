"""How ``gradsyncrun`` learns which worker died without a word, so that it can name it.

Each worker started by ``gradsyncrun`` connects to a Unix socket of the launcher's, says its
rank and process id, and says "leaving" before it ends on purpose (a clean shutdown, or an
error it reports itself). A worker whose connection closes before any worker said "leaving"
was killed or crashed: MPI then tears the job down without saying which rank it was.

This module imports neither MPI nor TensorFlow: the launcher uses it too.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time

SOCKET_VARIABLE = "GRADSYNC_ROLL_CALL"

_connection: socket.socket | None = None


def answer(rank: int) -> None:
    """Called by a worker once it knows its rank (best effort: no launcher, no socket)."""
    global _connection
    path = os.environ.get(SOCKET_VARIABLE)
    if not path or _connection is not None:
        return
    with contextlib.suppress(OSError):
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(path)
        connection.sendall(f"{rank} {os.getpid()}\n".encode())
        _connection = connection


def leaving() -> None:
    """Called by a worker that ends on purpose."""
    global _connection
    if _connection is not None:
        with contextlib.suppress(OSError):
            _connection.sendall(b"leaving\n")
            _connection.close()
        _connection = None


class Listener:
    """The launcher's end: notes the first worker that ended without saying "leaving"."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(1024)
        self._first_leaving: float | None = None
        self._silent_ends: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        #: rank -> process id of the workers connected now.
        self._live: dict[int, int] = {}
        #: (rank, process id) of every worker that ended without saying "leaving", in order.
        self._silent: list[tuple[int, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def live_workers(self) -> dict[int, int]:
        """Rank -> process id of the workers that are connected now."""
        with self._lock:
            return dict(self._live)

    def silent_ends(self) -> list[tuple[int, int]]:
        """(rank, process id) of each worker that ended without saying "leaving", in order
        (whether or not another worker left on purpose before)."""
        with self._lock:
            return list(self._silent)

    def close(self) -> None:
        """Stops accepting workers (the socket file is removed by its folder's owner)."""
        with contextlib.suppress(OSError):
            self._server.close()

    def died_without_a_word(self) -> str | None:
        """ "rank R (pid P)" of the first worker that ended silently before any worker left
        on purpose, or None."""
        for when, who in sorted(self._silent_ends):
            if self._first_leaving is None or when < self._first_leaving:
                return who
        return None

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._server, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is self._server:
                    connection, _ = self._server.accept()
                    selector.register(connection, selectors.EVENT_READ, bytearray())
                    continue
                try:
                    received = key.fileobj.recv(4096)
                except OSError:
                    received = b""
                if received:
                    key.data.extend(received)
                    self._note_worker(key.data)
                    if b"leaving" in key.data and self._first_leaving is None:
                        self._first_leaving = time.monotonic()
                    continue
                selector.unregister(key.fileobj)
                key.fileobj.close()
                words = key.data.decode(errors="replace").split()
                identity = _identity(words)
                with self._lock:
                    if identity is not None:
                        self._live.pop(identity[0], None)
                if "leaving" not in words and identity is not None:
                    who = f"rank {identity[0]} (pid {identity[1]})"
                    self._silent_ends.append((time.monotonic(), who))
                    with self._lock:
                        self._silent.append(identity)

    def _note_worker(self, data: bytearray) -> None:
        identity = _identity(data.decode(errors="replace").split())
        if identity is not None and b"\n" in data:
            with self._lock:
                self._live.setdefault(identity[0], identity[1])


def _identity(words: list[str]) -> tuple[int, int] | None:
    """(rank, pid) from a worker's first line, or None if it is not there yet."""
    if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
        return int(words[0]), int(words[1])
    return None
