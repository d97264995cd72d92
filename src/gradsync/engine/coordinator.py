"""Agreement between ranks on which collective runs next.

MPI matches collectives by the order in which each rank issues them. Before any data moves,
the ranks exchange a fixed-size header (one small allreduce) naming the collective each one
proposes and a digest of its signature (operation, dtypes, shapes, root). Because every
collective starts with the same header exchange, ranks that disagree, even ones calling
different collectives, meet in it and all raise the same ``CollectiveMismatchError``.

Once a program's collectives are known, the header round trip is skipped: every rank remembers
which collective followed which (the same memory on every rank, since it is only updated by
what all ranks did together), and when the next one is predicted, the data travels at once
with one flag element appended to its first message. A rank whose call differs from the
prediction sends a decoy of the predicted message's size with the flag raised, so no MPI call
ever sees different sizes; everyone then sees the flag, and the ranks fall back to the header
exchange, which runs the call or reports the mismatch as above.

Requests built in a TensorFlow v1 graph may be executed by several threads in any order within
one ``Session.run``. They are marked ``may_wait``: when the ranks propose different ones, they
share the names of all their pending requests and run the smallest name pending everywhere,
or wait for more to arrive, so all ranks converge on the same order. A disagreement that
persists for ``GRADSYNC_STALL_TIMEOUT`` seconds (default 60) becomes an error.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from gradsync.engine.errors import CollectiveMismatchError
from gradsync.engine.world import World


@dataclasses.dataclass(eq=False)
class Request:
    """One collective as issued by this rank."""

    kind: str
    name: str
    signature: dict[str, Any]
    execute: Callable[[MPI.Comm], Any]
    may_wait: bool = False
    #: For requests that can travel without a header: runs the collective with a flag element
    #: of 0 appended to its first message; returns ``(True, result)``, or ``(False, None)``
    #: when another rank raised the flag (nothing further is then sent).
    execute_flagged: Callable[[MPI.Comm], tuple[bool, Any]] | None = None
    #: Set by ``execute_flagged``'s first message: sends zeros of that message's size with the
    #: flag raised, for a rank whose own call differs from this one.
    decoy: Callable[[MPI.Comm], None] | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    @property
    def key(self) -> str:
        return f"{self.kind} '{self.name}'"

    @functools.cached_property
    def token(self) -> tuple[str, str]:
        """What must be equal on every rank for the call to travel without a header."""
        return (self.key, _signature_text(self))

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        # The execute closures may refer back to this request: dropping them breaks the cycle,
        # so that the arrays they hold are freed now rather than at the next garbage collection.
        self.execute = self.execute_flagged = None  # type: ignore[assignment]
        self.done.set()


def _digest(text: str) -> int:
    """A 62-bit digest, so that its negation fits an int64."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 2


def _signature_text(request: Request) -> str:
    return repr(sorted(request.signature.items()))


def _stall_timeout() -> float:
    return float(os.environ.get("GRADSYNC_STALL_TIMEOUT", "60"))


_pending: list[Request] = []
_executed: dict[str, int] = {}
_pending_lock = threading.Lock()
_comm_lock = threading.Lock()


@dataclasses.dataclass
class _Prediction:
    token: tuple[str, str]
    decoy: Callable[[MPI.Comm], None]


class _History:
    """Which collective followed which: the same on every rank, updated only by outcomes that
    every rank observed alike."""

    #: After this many wrong predictions following one collective, stop predicting after it
    #: (v1 graphs whose concurrent collectives run in a different order each step).
    MAX_MISSES = 8

    def __init__(self) -> None:
        self.last: tuple[str, str] | None = None
        self.successors: dict[tuple[str, str] | None, _Prediction] = {}
        self.misses: dict[tuple[str, str] | None, int] = {}

    def prediction(self) -> _Prediction | None:
        return self.successors.get(self.last)

    def executed(self, request: Request) -> None:
        if request.decoy is not None and self.misses.get(self.last, 0) < self.MAX_MISSES:
            self.successors[self.last] = _Prediction(request.token, request.decoy)
        else:
            self.successors.pop(self.last, None)
        self.last = request.token

    def missed(self) -> None:
        self.successors.pop(self.last, None)
        self.misses[self.last] = self.misses.get(self.last, 0) + 1

    def lost(self) -> None:
        """The ranks failed with different calls: nothing can be assumed about the next one."""
        self.last = None


_history = _History()


def executed_counts() -> dict[str, int]:
    """How many collectives of each kind this process has executed since ``init()``, and how
    many header exchanges (``"negotiation"``) it took to agree on them."""
    return dict(_executed)


def reset() -> None:
    """Forgets pending requests and the history of collectives (used by ``shutdown``)."""
    global _history
    with _pending_lock:
        for request in _pending:
            request.finish(error=RuntimeError("gradsync was shut down"))
        _pending.clear()
        _executed.clear()
        _history = _History()


def run(world: World, request: Request) -> Any:
    """Runs ``request`` once every rank has issued a matching one, and returns its result."""
    if world.size == 1:
        _count(request)
        return request.execute(world.comm)
    with _pending_lock:
        _pending.append(request)
    started = time.monotonic()
    while not request.done.is_set():
        with _comm_lock:
            if request.done.is_set():
                break
            with _pending_lock:
                proposal = min(_pending, key=lambda r: r.key)
            if _run_predicted(world):
                continue
            give_up = time.monotonic() - started > _stall_timeout()
            progressed = _negotiate_and_run(world, proposal, give_up)
        if not progressed:
            request.done.wait(0.0005)
    if request.error is not None:
        raise request.error
    return request.result


def _run_predicted(world: World) -> bool:
    """Runs the predicted collective without a header if every rank has issued it; returns
    False when there is no prediction or some rank has not (the header exchange follows)."""
    prediction = _history.prediction()
    if prediction is None:
        return False
    with _pending_lock:
        matching = [r for r in _pending if r.token == prediction.token]
    if matching and matching[0].execute_flagged is not None:
        request = matching[0]
        if _complete(request, request.execute_flagged, world.comm):
            return True
    else:
        prediction.decoy(world.comm)
    _history.missed()
    return False


def _negotiate_and_run(world: World, proposal: Request, give_up: bool) -> bool:
    """One header round; returns False when the ranks should propose again later."""
    _executed["negotiation"] = _executed.get("negotiation", 0) + 1
    name_digest, signature_digest = _digest(proposal.key), _digest(proposal.token[1])
    header = np.array(
        [
            name_digest,
            -name_digest,
            signature_digest,
            -signature_digest,
            -int(proposal.may_wait),
        ],
        dtype=np.int64,
    )
    world.comm.Allreduce(MPI.IN_PLACE, header, op=MPI.MAX)
    same_name = header[0] == -header[1]
    same_signature = header[2] == -header[3]
    all_may_wait = header[4] == -1

    if same_name and same_signature:
        _execute(world, proposal)
        return True
    if not same_name and all_may_wait:
        return _settle_waiting_requests(world, give_up)
    _fail_with_descriptions(world, proposal)
    return True


def _count(request: Request) -> None:
    _executed[request.kind] = _executed.get(request.kind, 0) + 1


def _execute(world: World, request: Request) -> None:
    _complete(request, lambda comm: (True, request.execute(comm)), world.comm)


def _complete(request: Request, run: Callable[[MPI.Comm], tuple[bool, Any]], comm) -> bool:
    """Runs ``request``; unless ``run`` reports that another rank raised the flag, records it
    as executed (on every rank alike, even where it failed) and hands over its outcome."""
    try:
        completed, result = run(comm)
        error = None
    except BaseException as raised:  # noqa: BLE001 - handed to the caller's thread
        completed, result, error = True, None, raised
    if not completed:
        return False
    _take(request)
    _count(request)
    _history.executed(request)
    request.finish(result, error)
    return True


_V1_HINT = (
    " In a v1 graph, the collectives one Session.run executes concurrently are matched between "
    "ranks at run time; when more are waiting than TensorFlow has inter-op threads, they can "
    "miss each other. Fuse them with grouped_allreduce, or order them with "
    "tf.control_dependencies."
)


def _fail_with_descriptions(world: World, request: Request, hint: str = "") -> None:
    descriptions = world.comm.allgather(
        {"key": request.key, "kind": request.kind, **request.signature}
    )
    _take(request)
    _history.lost()
    request.finish(error=CollectiveMismatchError(describe_mismatch(descriptions) + hint))


def _settle_waiting_requests(world: World, give_up: bool) -> bool:
    """The ranks proposed different graph-mode requests: each shares its pending keys, and
    they run the smallest key pending on every rank. Returns False when there is none yet."""
    with _pending_lock:
        mine = {r.key: r for r in _pending}
    everyone = world.comm.allgather((sorted(mine), give_up))
    common = set(mine).intersection(*(set(keys) for keys, _ in everyone))
    if common:
        chosen = mine[min(common)]
        header = np.array([_digest(_signature_text(chosen))] * 2, dtype=np.int64)
        header[1] = -header[1]
        world.comm.Allreduce(MPI.IN_PLACE, header, op=MPI.MAX)
        if header[0] == -header[1]:
            _execute(world, chosen)
        else:
            _fail_with_descriptions(world, chosen)
        return True
    if any(gave_up for _, gave_up in everyone):
        _fail_with_descriptions(world, min(mine.values(), key=lambda r: r.key), _V1_HINT)
        return True
    return False


def _take(request: Request) -> None:
    with _pending_lock:
        _pending.remove(request)


def describe_mismatch(descriptions: list[dict[str, Any]]) -> str:
    """Says, for the first field where the ranks' collectives differ, what each rank sent."""
    reference = descriptions[0]
    for rank, description in enumerate(descriptions[1:], start=1):
        if description["key"] != reference["key"]:
            return (
                f"ranks issued different collectives: rank {rank} called {description['key']}, "
                f"rank 0 called {reference['key']}. Every rank must issue the same collectives "
                "in the same order."
            )
    key = reference["key"]
    for rank, description in enumerate(descriptions[1:], start=1):
        for field, value in reference.items():
            other = description.get(field)
            if other == value:
                continue
            if field == "tensors":
                return f"{key}: " + _describe_tensor_difference(rank, other, value)
            return f"{key}: rank {rank} sent {field} {other!r}, rank 0 sent {value!r}."
    return f"{key}: the ranks' signatures differ: {descriptions!r}"


def _describe_tensor_difference(rank: int, theirs: list, ours: list) -> str:
    if len(theirs) != len(ours):
        return f"rank {rank} sent {len(theirs)} tensors, rank 0 sent {len(ours)}."
    for index, ((their_dtype, their_shape), (our_dtype, our_shape)) in enumerate(
        zip(theirs, ours, strict=True)
    ):
        where = f"tensor {index}: " if len(ours) > 1 else ""
        if their_dtype != our_dtype:
            return f"{where}rank {rank} sent dtype {their_dtype}, rank 0 sent {our_dtype}."
        if their_shape != our_shape:
            return (
                f"{where}rank {rank} sent shape {tuple(their_shape)}, "
                f"rank 0 sent {tuple(our_shape)}."
            )
    return f"rank {rank} sent different tensors from rank 0."
