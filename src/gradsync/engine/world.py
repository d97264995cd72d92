"""The set of processes taking part in training, and where each one sits.

Started by a launcher (``gradsyncrun``, ``mpiexec``, ``srun``), the world is every process of
the MPI job; started as a plain ``python script.py``, it is a world of one process, in which
every collective returns its input.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time

from mpi4py import MPI

from gradsync import roll_call
from gradsync.engine.coordinator import Coordinator, Request
from gradsync.engine.errors import CollectiveMismatchError, NotInitializedError
from gradsync.engine.link import simulated_link


@dataclasses.dataclass(frozen=True)
class World:
    """Communicators and coordinates of this process, fixed between init() and shutdown()."""

    comm: MPI.Comm
    coordinator: Coordinator
    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int
    #: Whether every machine runs the same number of ranks.
    homogeneous: bool


_lock = threading.Lock()
_world: World | None = None
#: Called as the world is left (process sets free their communicators).
_on_shutdown: list = []
_previous_excepthook = None


def _make_world(parent: MPI.Comm) -> World:
    comm = parent.Dup()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    cross = comm.Split(color=local.Get_rank(), key=comm.Get_rank())
    world = World(
        comm=comm,
        coordinator=Coordinator(comm),
        rank=comm.Get_rank(),
        size=comm.Get_size(),
        local_rank=local.Get_rank(),
        local_size=local.Get_size(),
        cross_rank=cross.Get_rank(),
        cross_size=cross.Get_size(),
        homogeneous=len(set(comm.allgather(local.Get_size()))) == 1,
    )
    local.Free()
    cross.Free()
    return world


def _abort_on_uncaught_exception(exc_type, exc, tb) -> None:
    """Prints the error, then ends the whole job so that the other ranks do not wait forever."""
    hook = _previous_excepthook or sys.__excepthook__
    hook(exc_type, exc, tb)
    world = _world
    if world is not None and world.size > 1 and not issubclass(exc_type, KeyboardInterrupt):
        sys.stderr.write(
            f"gradsync: rank {world.rank} failed with {exc_type.__name__}; ending the job.\n"
        )
        sys.stderr.flush()
        sys.stdout.flush()
        roll_call.leaving()
        time.sleep(0.5)  # lets the launcher forward the error before the job is torn down
        MPI.COMM_WORLD.Abort(1)


def init(comm: MPI.Comm | None = None) -> None:
    """Joins the world of processes started by the launcher (or a world of one without one).

    Call once, on every rank, before any collective. ``comm`` restricts gradsync to a
    sub-communicator; by default it spans every process of the MPI job. Calling ``init`` again
    while initialized does nothing. While initialized, an uncaught exception on any rank ends
    the whole job, so a failed worker never leaves the others waiting in a collective, and a
    rank that ends its program takes part in a last collective, so that ranks still waiting
    in another one get a ``CollectiveMismatchError`` instead of waiting forever.
    """
    global _world, _previous_excepthook
    with _lock:
        if _world is not None:
            return
        simulated_link()  # a malformed GRADSYNC_SIMULATED_LINK fails here, on every rank
        _world = _make_world(comm if comm is not None else MPI.COMM_WORLD)
        roll_call.answer(_world.rank)
        atexit.register(shutdown)
        if os.environ.get("GRADSYNC_ABORT_ON_ERROR", "1") != "0":
            _previous_excepthook = sys.excepthook
            sys.excepthook = _abort_on_uncaught_exception


def shutdown() -> None:
    """Leaves the world, together with the other ranks; ``init()`` may be called again.

    Leaving is a collective, which returns once every rank has left: a rank that is still
    issuing other collectives gets a ``CollectiveMismatchError`` naming this one for each of
    them, instead of waiting forever for this rank.
    """
    global _world, _previous_excepthook
    world = _world
    if world is None:
        return
    atexit.unregister(shutdown)
    roll_call.leaving()
    try:
        while True:
            leave = Request("shutdown", "world", {}, lambda comm: None)
            try:
                world.coordinator.run(leave)
                break
            except CollectiveMismatchError:
                continue  # the others were told; wait for them to leave too
    finally:
        with _lock:
            for listener in _on_shutdown:
                listener()
            world.coordinator.close()
            world.comm.Free()
            _world = None
            if _previous_excepthook is not None:
                sys.excepthook = _previous_excepthook
                _previous_excepthook = None


def is_initialized() -> bool:
    """Whether ``init()`` has been called (and ``shutdown()`` has not)."""
    return _world is not None


def current(what: str = "this call") -> World:
    """The current world; raises ``NotInitializedError`` naming ``what`` before ``init()``."""
    world = _world
    if world is None:
        raise NotInitializedError(what)
    return world


def rank() -> int:
    """This process's index in the world, 0 to ``size() - 1``."""
    return current("rank()").rank


def size() -> int:
    """The number of processes in the world."""
    return current("size()").size


def local_rank() -> int:
    """This process's index among the processes on its machine."""
    return current("local_rank()").local_rank


def local_size() -> int:
    """The number of processes on this process's machine."""
    return current("local_size()").local_size


def cross_rank() -> int:
    """The index of this process's machine among the machines, as seen by its local rank."""
    return current("cross_rank()").cross_rank


def cross_size() -> int:
    """The number of machines that have a process with this process's local rank."""
    return current("cross_size()").cross_size
