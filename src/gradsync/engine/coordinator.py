"""Agreement between ranks on which collective runs next.

MPI matches collectives by the order in which each rank issues them. Before any data moves,
the ranks exchange a fixed-size header (one small allreduce) naming the collective each one
proposes and a digest of its signature (operation, dtypes, shapes, root). Because every
collective starts with the same header exchange, ranks that disagree, even ones calling
different collectives, meet in it and all raise the same ``CollectiveMismatchError``.

Requests built in a TensorFlow v1 graph may be executed by several threads in any order within
one ``Session.run``. They are marked ``may_wait``: when the ranks propose different ones, each
rank waits for its other pending requests to arrive and proposes again, always the smallest
name first, so all ranks converge on the same order. A disagreement that persists for
``GRADSYNC_STALL_TIMEOUT`` seconds (default 60) becomes an error.
"""

from __future__ import annotations

import dataclasses
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
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    @property
    def key(self) -> str:
        return f"{self.kind} '{self.name}'"

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


def _digest(text: str) -> int:
    """A 62-bit digest, so that its negation fits an int64."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 2


def _stall_timeout() -> float:
    return float(os.environ.get("GRADSYNC_STALL_TIMEOUT", "60"))


_pending: list[Request] = []
_pending_lock = threading.Lock()
_comm_lock = threading.Lock()


def reset() -> None:
    """Forgets pending requests (used by ``shutdown``)."""
    with _pending_lock:
        for request in _pending:
            request.finish(error=RuntimeError("gradsync was shut down"))
        _pending.clear()


def run(world: World, request: Request) -> Any:
    """Runs ``request`` once every rank has issued a matching one, and returns its result."""
    if world.size == 1:
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
            give_up = time.monotonic() - started > _stall_timeout()
            progressed = _negotiate_and_run(world, proposal, give_up)
        if not progressed:
            request.done.wait(0.0005)
    if request.error is not None:
        raise request.error
    return request.result


def _negotiate_and_run(world: World, proposal: Request, give_up: bool) -> bool:
    """One header round; returns False when the ranks should propose again later."""
    signature_text = repr(sorted(proposal.signature.items()))
    name_digest, signature_digest = _digest(proposal.key), _digest(signature_text)
    header = np.array(
        [
            name_digest,
            -name_digest,
            signature_digest,
            -signature_digest,
            -int(proposal.may_wait),
            int(give_up),
        ],
        dtype=np.int64,
    )
    world.comm.Allreduce(MPI.IN_PLACE, header, op=MPI.MAX)
    same_name = header[0] == -header[1]
    same_signature = header[2] == -header[3]
    all_may_wait = header[4] == -1
    anyone_gives_up = header[5] == 1

    if same_name and same_signature:
        _take(proposal)
        try:
            proposal.finish(result=proposal.execute(world.comm))
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            proposal.finish(error=error)
        return True
    if not same_name and all_may_wait and not anyone_gives_up:
        return False
    descriptions = world.comm.allgather(
        {"key": proposal.key, "kind": proposal.kind, **proposal.signature}
    )
    _take(proposal)
    proposal.finish(error=CollectiveMismatchError(describe_mismatch(descriptions)))
    return True


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
