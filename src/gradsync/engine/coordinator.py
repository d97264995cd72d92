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

Every round starts with the stall inspector's barrier (``stall``), so a rank kept waiting by
another can say which. A rank that has joined (``join``) proposes "join" in every round; while
some ranks have, the others' allreduces run with the joined ranks contributing zeros (a
stand-in request made from the others' description, see ``register_stand_in``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from gradsync.engine import link, timeline
from gradsync.engine.errors import CollectiveMismatchError, WorkerLostError
from gradsync.engine.stall import inspector_for


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
    #: Says what a rank that has joined needs to take part with zeros (see
    #: ``register_stand_in``), when asked; None for collectives joined ranks cannot take part in.
    stand_in_spec: Callable[[], dict[str, Any]] | None = None
    issued_at: float = dataclasses.field(default_factory=time.perf_counter)
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
    fields = tuple(sorted(request.signature.items()))
    try:
        return _text_of(fields)
    except TypeError:  # a signature with a list or dict in it: not cached
        return repr(fields)


@functools.lru_cache(maxsize=256)
def _text_of(fields: tuple) -> str:
    """A signature's text, computed once: a step issues the same collectives again and again."""
    return repr(fields)


def _stall_timeout() -> float:
    return float(os.environ.get("GRADSYNC_STALL_TIMEOUT", "60"))


@dataclasses.dataclass
class _Prediction:
    token: tuple[str, str]
    decoy: Callable[[MPI.Comm], None]


class _History:
    """Which collective followed which: the same on every rank, updated only by outcomes that
    every rank observed alike."""

    #: Predictions after a collective stop once they have missed this many times more than
    #: they were right (v1 graphs whose concurrent collectives run in a different order each
    #: step); a program whose collectives mostly repeat, with an occasional other one (an
    #: evaluation at the end of each epoch), keeps its predictions.
    MAX_MISSES = 8

    def __init__(self) -> None:
        self.last: tuple[str, str] | None = None
        self.successors: dict[tuple[str, str] | None, _Prediction] = {}
        self.misses: dict[tuple[str, str] | None, int] = {}

    def prediction(self) -> _Prediction | None:
        return self.successors.get(self.last)

    def executed(self, request: Request, predicted: bool = False) -> None:
        if predicted and self.misses.get(self.last, 0) > 0:
            self.misses[self.last] -= 1
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


#: ``factory(stand_in_spec, name)``: the request a rank that has joined issues to take part in
#: another rank's collective of the kind it is registered for (see ``Coordinator.join``).
StandInFactory = Callable[[dict[str, Any], str], Request]
_stand_in_factories: dict[str, StandInFactory] = {}


def register_stand_in(kind: str, factory: StandInFactory) -> None:
    """Lets ranks that have joined take part in collectives of ``kind`` (allreduce)."""
    _stand_in_factories[kind] = factory


class Coordinator:
    """Orders the collectives of one communicator (the world's, or a process set's)."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm
        self._pending: list[Request] = []
        self._executed: dict[str, int] = {}
        self._pending_lock = threading.Lock()
        self._comm_lock = threading.Lock()
        self._history = _History()
        #: How many collectives had completed when this rank joined; None while not joined.
        self._joined_at: int | None = None
        self._inspector = inspector_for(comm)

    def executed_counts(self) -> dict[str, int]:
        """How many collectives of each kind ran here, and how many header exchanges
        (``"negotiation"``) it took to agree on them."""
        return dict(self._executed)

    def close(self) -> None:
        """Fails the pending requests and stops the stall inspector (the world is left)."""
        self.reset()
        if self._inspector is not None:
            self._inspector.close()
            self._inspector = None

    def reset(self) -> None:
        """Fails the pending requests and forgets the history of collectives."""
        with self._pending_lock:
            for request in self._pending:
                request.finish(error=RuntimeError("gradsync was shut down"))
            self._pending.clear()
            self._executed.clear()
            self._history = _History()

    def run(self, request: Request) -> Any:
        """Runs ``request`` once every rank has issued a matching one; returns its result."""
        if self.comm.Get_size() == 1:
            self._count(request)
            return request.execute(self.comm)
        with self._pending_lock:
            self._pending.append(request)
        started = time.monotonic()
        while not request.done.is_set():
            with self._comm_lock:
                if request.done.is_set():
                    break
                with self._pending_lock:
                    proposal = min(self._pending, key=lambda r: r.key)
                # Ranks that joined or are leaving wait for the others by design.
                inspect = proposal.kind not in ("join", "shutdown")
                self._inspector.wait_for_everyone(self.comm, proposal.key, inspect)
                if self._run_predicted():
                    continue
                give_up = time.monotonic() - started > _stall_timeout()
                progressed = self._negotiate_and_run(proposal, give_up)
            if not progressed:
                request.done.wait(0.0005)
        if request.error is not None:
            raise request.error
        return request.result

    def join(self) -> int:
        """Takes part in the other ranks' allreduces with zeros until every rank has joined;
        returns the rank that joined last (the highest such rank when several joined at once).
        """
        self._joined_at = sum(self._executed.values()) - self._executed.get("negotiation", 0)

        def last_to_join(comm: MPI.Comm) -> int:
            times = comm.allgather(self._joined_at)
            latest = max(times)
            return max(r for r, t in enumerate(times) if t == latest)

        try:
            return self.run(Request("join", "join", {}, last_to_join))
        finally:
            self._joined_at = None

    # The protocol below runs with the communicator lock held, on every rank alike.

    def _run_predicted(self) -> bool:
        """Runs the predicted collective without a header if every rank has issued it;
        returns False when there is no prediction or some rank has not (a header follows)."""
        prediction = self._history.prediction()
        if prediction is None:
            return False
        with self._pending_lock:
            matching = [r for r in self._pending if r.token == prediction.token]
        if matching and matching[0].execute_flagged is not None:
            request = matching[0]
            if self._complete(request, request.execute_flagged, predicted=True):
                return True
        else:
            prediction.decoy(self.comm)
        self._history.missed()
        return False

    def _negotiate_and_run(self, proposal: Request, give_up: bool) -> bool:
        """One header round; returns False when the ranks should propose again later."""
        self._executed["negotiation"] = self._executed.get("negotiation", 0) + 1
        began = time.perf_counter()
        name_digest, signature_digest = _digest(proposal.key), _digest(proposal.token[1])
        joining = int(proposal.kind == "join")
        header = np.array(
            [
                name_digest,
                -name_digest,
                signature_digest,
                -signature_digest,
                -int(proposal.may_wait),
                joining,
                -joining,
            ],
            dtype=np.int64,
        )
        self.comm.Allreduce(MPI.IN_PLACE, header, op=MPI.MAX)
        link.wait_as_on_link(header.nbytes, self.comm.Get_size())
        if timeline.recording():
            timeline.record(proposal.key, "negotiation", began, time.perf_counter())
        same_name = header[0] == -header[1]
        same_signature = header[2] == -header[3]
        all_may_wait = header[4] == -1
        some_joined, all_joined = header[5] == 1, header[6] == -1

        if some_joined and not all_joined:
            self._run_beside_joined(proposal)
            return True
        if same_name and same_signature:
            self._execute(proposal)
            return True
        if not same_name and all_may_wait:
            return self._settle_waiting_requests(give_up)
        self._fail_with_descriptions(proposal)
        return True

    def _run_beside_joined(self, proposal: Request) -> None:
        """Some ranks have joined: those that have not must agree on one collective, which
        the joined ranks then run with stand-in (zero) inputs; anything else fails everywhere.
        """
        joined = proposal.kind == "join"
        mine = None if joined else {"key": proposal.key, **_describe(proposal)}
        everyone = self.comm.allgather(mine)
        active = [d for d in everyone if d is not None]
        joined_ranks = [r for r, d in enumerate(everyone) if d is None]
        first = active[0]
        factory = _stand_in_factories.get(first["kind"])
        if any(d["key"] != first["key"] or d["signature"] != first["signature"] for d in active):
            error = CollectiveMismatchError(describe_mismatch(everyone, skip=joined_ranks))
        elif factory is None or first["stand_in"] is None:
            error = CollectiveMismatchError(
                f"{first['key']} cannot run while ranks {joined_ranks} have joined: only "
                "allreduce (Sum or Average) takes inputs from joined ranks. Call join() only "
                "once a rank has no more collectives to issue but allreduces."
            )
        else:
            if joined:
                stand_in = factory(first["stand_in"], first["name"])
                self._execute(stand_in, remove=False)  # the join request stays pending
            else:
                self._execute(proposal)
            return
        self._history.lost()
        self._take(proposal)
        proposal.finish(error=error)

    def _count(self, request: Request) -> None:
        self._executed[request.kind] = self._executed.get(request.kind, 0) + 1

    def _execute(self, request: Request, remove: bool = True) -> None:
        self._complete(request, lambda comm: (True, request.execute(comm)), remove)

    def _complete(
        self,
        request: Request,
        run: Callable[[MPI.Comm], tuple[bool, Any]],
        remove: bool = True,
        predicted: bool = False,
    ) -> bool:
        """Runs ``request``; unless ``run`` reports that another rank raised the flag, records
        it as executed (on every rank alike, even where it failed) and hands over its outcome.
        """
        began = time.perf_counter()
        try:
            completed, result = run(self.comm)
            error = None
        except MPI.Exception as raised:
            lost = WorkerLostError(
                f"{request.key} failed in MPI ({raised.Get_error_string()}): a worker of the "
                "job was most likely lost."
            )
            lost.__cause__ = raised
            completed, result, error = True, None, lost
        except BaseException as raised:  # noqa: BLE001 - handed to the caller's thread
            completed, result, error = True, None, raised
        if not completed:
            return False
        if timeline.recording():
            timeline.record(request.key, "queued", request.issued_at, began)
            timeline.record(request.key, "communication", began, time.perf_counter())
        if remove:
            self._take(request)
        self._count(request)
        self._history.executed(request, predicted)
        request.finish(result, error)
        return True

    def _fail_with_descriptions(self, request: Request, hint: str = "") -> None:
        descriptions = self.comm.allgather({"key": request.key, **_describe(request)})
        self._take(request)
        self._history.lost()
        request.finish(error=CollectiveMismatchError(describe_mismatch(descriptions) + hint))

    def _settle_waiting_requests(self, give_up: bool) -> bool:
        """The ranks proposed different graph-mode requests: each shares its pending keys, and
        they run the smallest key pending on every rank. Returns False when there is none yet.
        """
        with self._pending_lock:
            mine = {r.key: r for r in self._pending}
        everyone = self.comm.allgather((sorted(mine), give_up))
        common = set(mine).intersection(*(set(keys) for keys, _ in everyone))
        if common:
            chosen = mine[min(common)]
            header = np.array([_digest(_signature_text(chosen))] * 2, dtype=np.int64)
            header[1] = -header[1]
            self.comm.Allreduce(MPI.IN_PLACE, header, op=MPI.MAX)
            if header[0] == -header[1]:
                self._execute(chosen)
            else:
                self._fail_with_descriptions(chosen)
            return True
        if any(gave_up for _, gave_up in everyone):
            self._fail_with_descriptions(min(mine.values(), key=lambda r: r.key), _V1_HINT)
            return True
        return False

    def _take(self, request: Request) -> None:
        with self._pending_lock:
            self._pending.remove(request)


def _describe(request: Request) -> dict[str, Any]:
    """What a rank tells the others about its collective when they must compare them."""
    return {
        "kind": request.kind,
        "name": request.name,
        "signature": request.signature,
        "stand_in": request.stand_in_spec() if request.stand_in_spec is not None else None,
    }


_V1_HINT = (
    " In a v1 graph, the collectives one Session.run executes concurrently are matched between "
    "ranks at run time; when more are waiting than TensorFlow has inter-op threads, they can "
    "miss each other. Fuse them with grouped_allreduce, or order them with "
    "tf.control_dependencies."
)


def describe_mismatch(descriptions: list[dict[str, Any] | None], skip: Sequence[int] = ()) -> str:
    """Says, for the first field where the ranks' collectives differ, what each rank sent.

    ``descriptions`` holds each rank's (from ``_describe``); ranks in ``skip`` are left out.
    """
    ranked = [(r, d) for r, d in enumerate(descriptions) if r not in skip and d is not None]
    first_rank, reference = ranked[0]
    for rank, description in ranked[1:]:
        if description["key"] != reference["key"]:
            return (
                f"ranks issued different collectives: rank {rank} called {description['key']}, "
                f"rank {first_rank} called {reference['key']}. Every rank must issue the same "
                "collectives in the same order."
            )
    key, signature = reference["key"], reference["signature"]
    for rank, description in ranked[1:]:
        theirs = description["signature"]
        # The layout last: it differs whenever the tensors do, and says less.
        fields = sorted(set(signature) | set(theirs), key=lambda f: (f == "layout", f))
        for field in fields:
            value, other = signature.get(field), theirs.get(field)
            if other == value:
                continue
            if field == "layout":
                return (
                    f"{key}: the ranks packed the same tensors differently (rank {rank}: "
                    f"{other!r}, rank {first_rank}: {value!r}); issue the collective the same "
                    "way on every rank."
                )
            if field == "refused":
                refused_rank, reason = (rank, other) if other else (first_rank, value)
                return f"{key}: rank {refused_rank} refused its arguments: {reason}"
            if field == "tensors":
                return f"{key}: " + _describe_tensor_difference(rank, other, value, first_rank)
            return f"{key}: rank {rank} sent {field} {other!r}, rank {first_rank} sent {value!r}."
    return f"{key}: the ranks' signatures differ: {descriptions!r}"


def _describe_tensor_difference(rank: int, theirs: list, ours: list, first_rank: int = 0) -> str:
    if len(theirs) != len(ours):
        return f"rank {rank} sent {len(theirs)} tensors, rank {first_rank} sent {len(ours)}."
    for index, ((their_dtype, their_shape), (our_dtype, our_shape)) in enumerate(
        zip(theirs, ours, strict=True)
    ):
        where = f"tensor {index}: " if len(ours) > 1 else ""
        if their_dtype != our_dtype:
            return (
                f"{where}rank {rank} sent dtype {their_dtype}, rank {first_rank} sent {our_dtype}."
            )
        if their_shape != our_shape:
            return (
                f"{where}rank {rank} sent shape {tuple(their_shape)}, "
                f"rank {first_rank} sent {tuple(our_shape)}."
            )
    return f"rank {rank} sent different tensors from rank {first_rank}."
