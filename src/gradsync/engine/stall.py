"""The stall inspector: a rank kept waiting for the others names who is missing.

Every round of the coordinator begins with a non-blocking barrier, waited for by polling, so a
waiting rank keeps control (and costs no core: it sleeps between polls once the others are
late). When it has waited ``GRADSYNC_STALL_CHECK_TIME`` seconds (default 60; 0 turns the
inspector off) it asks every other rank, over a communicator of its own, what it is doing,
and prints one warning naming the collective, how long it has waited, and the ranks that have
not reached it (with the collective each is in, if any). With
``GRADSYNC_STALL_SHUTDOWN_TIME`` set, a rank that has waited that long raises a
``StallError`` saying the same, which ends the job (as any uncaught error does).

Each rank answers such questions from a thread that wakes 5 times a second; it answers even
while its main thread sleeps or computes, as long as it does not hold the interpreter lock.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time

from mpi4py import MPI

from gradsync.engine.errors import GradsyncError

_QUESTION, _ANSWER = 71, 72
#: Polling: busy for this long first (the others are usually there within it), then asleep
#: between polls, for at most the longest pause.
_BUSY_SECONDS, _LONGEST_PAUSE = 0.002, 0.001
_ANSWER_WAIT = 2.0


class StallError(GradsyncError):
    """A rank waited longer than ``GRADSYNC_STALL_SHUTDOWN_TIME`` for the others."""


def _seconds(variable: str, default: float) -> float:
    value = os.environ.get(variable, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{variable} must be a number of seconds, got {value!r}.") from None


# What this process is waiting for, per coordinator: shared by its answering threads.
_doing: dict[int, tuple[str, float]] = {}
_doing_lock = threading.Lock()


class StallInspector:
    """Waits for the ranks of one communicator to arrive, and says who is missing."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm.Dup()  # questions and answers never meet the collectives' messages
        self._questions = itertools.count()
        self._stop = threading.Event()
        # Answering from a thread of its own needs an MPI that allows calls from any thread.
        self._answering: threading.Thread | None = None
        if MPI.Query_thread() == MPI.THREAD_MULTIPLE:
            self._answering = threading.Thread(
                target=self._answer, daemon=True, name="gradsync-stall-inspector"
            )
            self._answering.start()

    def close(self) -> None:
        self._stop.set()
        if self._answering is not None:
            self._answering.join()
        self.comm.Free()

    def wait_for_everyone(self, comm: MPI.Comm, key: str, inspect: bool = True) -> None:
        """Returns once every rank of ``comm`` has reached this point (a barrier), warning or
        raising as the stall settings say while it waits for ``key``."""
        with _doing_lock:
            _doing[id(self)] = (key, time.monotonic())
        try:
            self._wait(comm.Ibarrier(), key, inspect)
        finally:
            with _doing_lock:
                _doing.pop(id(self), None)

    def _wait(self, arrival: MPI.Request, key: str, inspect: bool) -> None:
        started = time.monotonic()
        while time.monotonic() - started < _BUSY_SECONDS:
            if arrival.Test():
                return
        check = _seconds("GRADSYNC_STALL_CHECK_TIME", 60.0)
        shutdown = _seconds("GRADSYNC_STALL_SHUTDOWN_TIME", 0.0)
        warned, pause = False, 0.00005
        while not arrival.Test():
            waited = time.monotonic() - started
            if inspect and check > 0 and not warned and waited >= check:
                warned = True
                sys.stderr.write(f"gradsync: {self._describe(key, waited)}\n")
                sys.stderr.flush()
            if inspect and shutdown > 0 and waited >= shutdown:
                raise StallError(
                    f"{self._describe(key, waited)} Ending the job: it waited longer than "
                    f"GRADSYNC_STALL_SHUTDOWN_TIME={shutdown:g} seconds."
                )
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE)

    def _describe(self, key: str, waited: float) -> str:
        me = self.comm.Get_rank()
        if self._answering is None:
            return (
                f"rank {me} has waited {waited:.0f} s in {key}; the other ranks cannot say "
                "where they are (the MPI library does not allow calls from several threads)."
            )
        missing = []
        for rank, doing in sorted(self._ask_everyone().items()):
            if doing is None:
                missing.append(f"rank {rank} (no answer)")
            elif key not in [k for k, _ in doing]:
                where = "; ".join(f"in {k} for {s:.0f} s" for k, s in doing) or "in no collective"
                missing.append(f"rank {rank} ({where})")
        who = ", ".join(missing) or "no rank (they are all in it)"
        return f"rank {me} has waited {waited:.0f} s in {key}; not reached by {who}."

    def _ask_everyone(self) -> dict[int, list[tuple[str, float]] | None]:
        """Each other rank's collectives in progress (None for a rank that did not answer)."""
        question = next(self._questions)
        me, size = self.comm.Get_rank(), self.comm.Get_size()
        others = [r for r in range(size) if r != me]
        for rank in others:
            self.comm.send(question, dest=rank, tag=_QUESTION)
        answers: dict[int, list | None] = dict.fromkeys(others)
        deadline = time.monotonic() + _ANSWER_WAIT
        while time.monotonic() < deadline and any(a is None for a in answers.values()):
            status = MPI.Status()
            if self.comm.iprobe(source=MPI.ANY_SOURCE, tag=_ANSWER, status=status):
                number, doing = self.comm.recv(source=status.Get_source(), tag=_ANSWER)
                if number == question:
                    answers[status.Get_source()] = doing
            else:
                time.sleep(0.01)
        return answers

    def _answer(self) -> None:
        status = MPI.Status()
        while not self._stop.is_set():
            if self.comm.iprobe(source=MPI.ANY_SOURCE, tag=_QUESTION, status=status):
                source = status.Get_source()
                question = self.comm.recv(source=source, tag=_QUESTION)
                now = time.monotonic()
                with _doing_lock:
                    doing = [(key, now - since) for key, since in _doing.values()]
                self.comm.send((question, doing), dest=source, tag=_ANSWER)
            else:
                self._stop.wait(0.2)


def inspector_for(comm: MPI.Comm) -> StallInspector | None:
    """A stall inspector for ``comm`` (collective: every rank makes one), or None alone."""
    return StallInspector(comm) if comm.Get_size() > 1 else None
