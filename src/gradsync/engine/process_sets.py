"""Process sets: subsets of the world's ranks whose collectives run among themselves.

Each registered set has its own MPI communicator and its own coordinator, so collectives of
different sets never wait for each other, and ranks outside a set take no part in its
collectives. ``global_process_set`` spans the whole world. Registering and removing a set are
collectives of the whole world: every rank makes the same call, as in Horovod.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable

from mpi4py import MPI

from gradsync.engine import timeline
from gradsync.engine import world as world_module
from gradsync.engine.coordinator import Coordinator, Request
from gradsync.engine.world import current


@dataclasses.dataclass(frozen=True)
class Group:
    """Where a collective runs: a communicator, its coordinator, this rank's place in it."""

    comm: MPI.Comm
    coordinator: Coordinator
    rank: int
    size: int


class ProcessSet:
    """A set of world ranks that run collectives among themselves (Horovod's ``ProcessSet``).

    Made from a list of world ranks (or an MPI communicator whose members are world ranks),
    it takes part in collectives once registered, by ``init(process_sets=[...])`` or
    ``add_process_set``; ``process_set_id`` is None until then.
    """

    def __init__(self, ranks_or_comm: Iterable[int] | MPI.Comm) -> None:
        self.process_set_id: int | None = None
        self.mpi_comm: MPI.Comm | None = None
        self.ranks: list[int] | None = None
        if isinstance(ranks_or_comm, MPI.Comm):
            self.mpi_comm = ranks_or_comm
        else:
            self.ranks = sorted({int(r) for r in ranks_or_comm})
        self._group: Group | None = None

    def size(self) -> int | None:
        """How many ranks the set holds (None while not registered)."""
        return None if self.process_set_id is None else len(self.ranks or [])

    def rank(self) -> int | None:
        """This process's index within the set: -1 outside it, None while not registered."""
        if self.process_set_id is None:
            return None
        me = current("ProcessSet.rank()").rank
        return self.ranks.index(me) if me in self.ranks else -1

    def included(self) -> bool | None:
        """Whether this process belongs to the set (None while not registered)."""
        if self.process_set_id is None:
            return None
        return current("ProcessSet.included()").rank in self.ranks

    def __repr__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks})"

    def _invalidate(self) -> None:
        if self._group is not None and self.process_set_id != 0:
            self._group.coordinator.close()
            self._group.comm.Free()
        self._group = None
        self.process_set_id = None


global_process_set = ProcessSet([])
_registered: dict[int, ProcessSet] = {}
_lock = threading.Lock()


def _world_group(world) -> Group:
    return Group(world.comm, world.coordinator, world.rank, world.size)


def group_of(process_set: ProcessSet | None, what: str) -> Group:
    """The group a collective on ``process_set`` runs in (the world's for None); raises a
    clear error when the set is not registered or this rank is not in it."""
    world = current(what)
    if process_set is None or process_set is global_process_set:
        return global_process_set._group or _world_group(world)
    if not isinstance(process_set, ProcessSet):
        raise ValueError(f"process_set must be a ProcessSet, got {process_set!r}.")
    if process_set.process_set_id is None:
        raise ValueError(
            f"{what}: {process_set!r} is not registered: pass it to init(process_sets=[...]) "
            "or add_process_set() on every rank first."
        )
    if process_set._group is None:
        raise ValueError(
            f"{what}: rank {world.rank} is not in {process_set!r}, so it cannot take part in "
            "its collectives. Call them only on the set's ranks (see ProcessSet.included())."
        )
    return process_set._group


def add_process_set(process_set: ProcessSet | Iterable[int]) -> ProcessSet:
    """Registers a process set, on every rank of the world alike; returns it."""
    world = current("add_process_set")
    if not isinstance(process_set, ProcessSet):
        process_set = ProcessSet(process_set)
    if process_set.process_set_id is not None:
        raise ValueError(f"{process_set!r} is already registered.")
    if process_set.mpi_comm is not None and process_set.ranks is None:
        world_ranks = MPI.Group.Translate_ranks(
            process_set.mpi_comm.Get_group(),
            list(range(process_set.mpi_comm.Get_size())),
            world.comm.Get_group(),
        )
        process_set.ranks = sorted(world_ranks)
    ranks = process_set.ranks or []
    if not ranks or ranks[0] < 0 or ranks[-1] >= world.size:
        raise ValueError(
            f"a process set needs ranks from 0 to {world.size - 1}, got {process_set.ranks}."
        )
    with _lock:
        for existing in _registered.values():
            if existing.ranks == ranks:
                raise ValueError(
                    f"a process set with ranks {ranks} is already registered: {existing!r}."
                )

    def split(comm: MPI.Comm) -> MPI.Comm:
        member = world.rank in ranks
        return comm.Split(0 if member else MPI.UNDEFINED, ranks.index(world.rank) if member else 0)

    request = Request("add_process_set", "process_set", {"ranks": ranks}, split)
    comm = world.coordinator.run(request)
    with _lock:
        process_set.process_set_id = max(_registered, default=0) + 1
        if comm != MPI.COMM_NULL:
            process_set._group = Group(comm, Coordinator(comm), comm.Get_rank(), comm.Get_size())
        _registered[process_set.process_set_id] = process_set
    return process_set


def remove_process_set(process_set: ProcessSet) -> bool:
    """Unregisters ``process_set`` on every rank alike; returns whether it was registered."""
    world = current("remove_process_set")
    if process_set is global_process_set:
        raise ValueError("the global process set cannot be removed.")
    identifier = process_set.process_set_id
    world.coordinator.run(
        Request("remove_process_set", "process_set", {"id": identifier}, lambda comm: None)
    )
    with _lock:
        if identifier is None or _registered.get(identifier) is not process_set:
            return False
        del _registered[identifier]
    process_set._invalidate()
    return True


def registered_process_sets() -> list[ProcessSet]:
    """The registered sets, the global one first."""
    with _lock:
        return [global_process_set, *(_registered[i] for i in sorted(_registered))]


def _start(process_sets: Iterable[ProcessSet | Iterable[int]]) -> None:
    world = current("init")
    global_process_set.ranks = list(range(world.size))
    global_process_set.process_set_id = 0
    global_process_set._group = _world_group(world)
    for process_set in process_sets:
        add_process_set(process_set)
    timeline.start_from_environment()


def _stop() -> None:
    if timeline.recording():
        path, spans, origin, mark_cycles = timeline.take()
        if path is not None:  # written by each rank: the world is being left, gather no more
            rank = current("shutdown").rank
            target = path if rank == 0 else f"{path}.rank{rank}"
            timeline.write(target, [spans], [origin], mark_cycles)
    with _lock:
        for process_set in _registered.values():
            process_set._invalidate()
        _registered.clear()
    global_process_set._group = None
    global_process_set.process_set_id = None


world_module._on_shutdown.append(_stop)


def init(comm: MPI.Comm | None = None, process_sets: Iterable | None = None) -> None:
    """Joins the world (see ``world.init``) and registers ``process_sets`` on every rank."""
    already = world_module.is_initialized()
    world_module.init(comm)
    if not already:
        _start(process_sets or [])
