"""Horovod's elastic ``State`` and ``run``, on gradsync's engine.

A state is committed in memory (``commit``: a copy, no disk write) and written to disk only
when the supervisor stops the world. ``run`` starts a training function from the newest
commit of the job (on a relaunch) or from rank 0's state (the first time), and turns the
function's end into an exit the supervisor understands.
"""

from __future__ import annotations

import copy
import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

from gradsync import engine
from gradsync.elastic import worker
from gradsync.engine import WorkerLostError  # noqa: F401 - part of this API


class HostsUpdatedInterrupt(RuntimeError):
    """The supervisor has hosts to add: every rank stops at this commit and the world is
    relaunched bigger (raised by ``State.commit`` and ``State.check_host_updates``)."""

    def __init__(self, skip_sync: bool = False) -> None:
        super().__init__("the hosts of the job changed; the world is relaunched")
        self.skip_sync = skip_sync


class State:
    """What survives a relaunch: ``save()`` makes an in-memory snapshot, ``load()`` puts one
    back. Subclasses say what the snapshot holds; attributes given as keyword arguments
    (``epoch``, ``batch``, ...) are kept too.

    ``bcast_object`` and ``get_rank`` are Horovod's constructor arguments, accepted and
    replaced by gradsync's engine.
    """

    def __init__(self, bcast_object: Any = None, get_rank: Any = None, **attributes: Any):
        self._attribute_names = list(attributes)
        for name, value in attributes.items():
            setattr(self, name, value)
        self._reset_callbacks: list[Callable[[], Any]] = []
        self._committed: Any = None
        self.commit_id = 0

    # What a subclass provides.

    def save(self) -> Any:
        """An in-memory snapshot of the state (copies, not references)."""
        return {"attributes": self._attributes()}

    def load(self, snapshot: Any) -> None:
        """Puts ``snapshot`` (from ``save``) back."""
        for name, value in snapshot["attributes"].items():
            setattr(self, name, copy.deepcopy(value))

    def reset(self) -> None:
        """Called after the world changed, before the state is synchronized."""

    # Horovod's API.

    def _attributes(self) -> dict[str, Any]:
        return {name: copy.deepcopy(getattr(self, name)) for name in self._attribute_names}

    def register_reset_callbacks(self, callbacks: list[Callable[[], Any]]) -> None:
        """Calls ``callbacks`` after each relaunch in a world of another size (to rescale a
        learning rate by ``size()``, for example)."""
        self._reset_callbacks.extend(callbacks)

    def on_reset(self) -> None:
        self.reset()
        for callback in self._reset_callbacks:
            callback()

    def commit(self) -> None:
        """Keeps the state as it is now, in memory, as what a relaunch resumes from; then
        checks for new hosts (``HostsUpdatedInterrupt``). Every rank commits at the same step."""
        with worker.commit_lock:
            self._committed = self.save()
            self.commit_id += 1
            worker.remember(self.commit_id, {"commit_id": self.commit_id, "state": self._committed})
        self.check_host_updates()

    def restore(self) -> None:
        """Undoes everything since the last commit."""
        if self._committed is not None:
            self.load(self._committed)

    def sync(self) -> None:
        """Makes every rank's state rank 0's."""
        root = engine.rank() == 0
        message = {"commit_id": self.commit_id, "state": self.save()} if root else None
        message = engine.broadcast_object(message, 0, name="elastic.sync")
        self.load(message["state"])
        self.commit_id = message["commit_id"]
        self._committed = message["state"]

    def check_host_updates(self) -> None:
        """Raises ``HostsUpdatedInterrupt`` on every rank when the supervisor has new hosts."""
        if not worker.supervised():
            return
        updated = engine.rank() == 0 and worker.hosts_updated()
        if engine.broadcast_object(updated, 0, name="elastic.hosts"):
            raise HostsUpdatedInterrupt(skip_sync=False)


class ObjectState(State):
    """A state of plain Python objects, given as keyword arguments (Horovod's)."""


def run(func: Callable[..., Any]) -> Callable[..., Any]:
    """Runs ``func(state, ...)`` elastically (Horovod's ``hvd.elastic.run``).

    Under ``gradsyncrun`` in elastic mode: rank 0 loads the newest complete commit of the job
    (after a relaunch) and every rank takes rank 0's state; reset callbacks run when the world
    was relaunched. When ``func`` raises, this rank writes its last commit and exits, and the
    supervisor relaunches the world from the newest commit; ``HostsUpdatedInterrupt`` makes
    every rank do so to grow the world. Without the supervisor, ``func`` simply runs after the
    state is synchronized.
    """

    @functools.wraps(func)
    def wrapper(state: State, *args: Any, **kwargs: Any) -> Any:
        rank = engine.rank()
        worker.start(rank)
        resumed = worker.newest_commit() if rank == 0 else None
        if resumed is not None:
            state.load(resumed[1]["state"])
            state.commit_id = resumed[0]
        state.sync()
        worker.remember(state.commit_id, {"commit_id": state.commit_id, "state": state._committed})
        if worker.generation() > 0:
            state.on_reset()
        if not worker.supervised():
            return func(state, *args, **kwargs)
        try:
            return func(state, *args, **kwargs)
        except HostsUpdatedInterrupt:
            worker.end(worker.RESTART_EXIT_CODE, rank)
        except BaseException:  # noqa: BLE001 - reported, then the supervisor takes over
            traceback.print_exc()
            sys.stderr.write(
                f"gradsync: rank {rank} failed; the world is relaunched from the last commit.\n"
            )
            worker.end(worker.FAILED_EXIT_CODE, rank)
        return None  # not reached: worker.end exits

    return wrapper
