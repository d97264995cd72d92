"""Collectives on numpy arrays: the engine's public operations.

Each call describes itself to the coordinator (kind, name, dtypes, shapes, parameters), which
runs it once every rank has issued a matching call. Lists of arrays travel fused: one MPI call
per dtype, however many arrays there are.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from gradsync.engine import coordinator, fusion
from gradsync.engine.reduce_ops import ReduceOp, check_reduce_op
from gradsync.engine.world import current

_FLOAT16_SUM: MPI.Op | None = None


def _float16_sum() -> MPI.Op:
    """MPI has no half-precision type; a user-defined sum over 16-bit words stands in."""
    global _FLOAT16_SUM
    if _FLOAT16_SUM is None:

        def add(source, target, datatype) -> None:
            out = np.frombuffer(target, dtype=np.float16)
            np.add(out, np.frombuffer(source, dtype=np.float16), out=out)

        _FLOAT16_SUM = MPI.Op.Create(add, commute=True)
    return _FLOAT16_SUM


# Large buffers are summed in pieces of this many bytes: MPICH reduces several mid-sized
# messages much faster than one very large one (between 2 local ranks, 42 MB of float32 took
# 17 ms in one call and 5 ms in 4 MiB pieces). Every rank cuts the same pieces.
CHUNK_BYTES = 4 << 20


def _sum_in_place(comm: MPI.Comm, buffer: np.ndarray, scale: float = 1.0, scaled: int = -1) -> None:
    """Sums ``buffer`` across ranks in place, then multiplies its first ``scaled`` elements
    (all when -1) by ``scale``: each piece right after its sum, while it is still in cache."""
    scaled = buffer.size if scaled < 0 else scaled
    if buffer.dtype == np.float16:
        words, datatype, op = buffer.view(np.uint16), MPI.UINT16_T, _float16_sum()
    else:
        words, datatype, op = buffer, None, MPI.SUM
    step = max(1, CHUNK_BYTES // buffer.itemsize)
    for start in range(0, max(words.size, 1), step):
        piece = words[start : start + step]
        if comm.Get_size() > 1:
            comm.Allreduce(MPI.IN_PLACE, piece if datatype is None else [piece, datatype], op=op)
        if scale != 1.0 and start < scaled:
            result = buffer[start : min(start + step, scaled)]
            np.multiply(result, scale, out=result, casting="unsafe")


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)


TensorSpec = tuple[np.dtype, tuple[int, ...]]


def _tensor_signature(
    arrays: Sequence[np.ndarray], tensor_specs: Sequence[TensorSpec] | None = None
) -> list[tuple[str, tuple[int, ...]]]:
    """What the ranks compare about the tensors: each one's dtype and shape."""
    if tensor_specs is None:
        tensor_specs = [(a.dtype, a.shape) for a in arrays]
    return [(_dtype_name(dtype), tuple(shape)) for dtype, shape in tensor_specs]


def check_root_rank(root_rank: object, world_size: int) -> int:
    """Returns ``root_rank`` if it names a rank of the world, else raises a clear error."""
    if isinstance(root_rank, bool) or not isinstance(root_rank, (int, np.integer)):
        raise ValueError(f"root_rank must be an integer rank, got {root_rank!r}.")
    if not 0 <= root_rank < world_size:
        raise ValueError(
            f"root_rank={root_rank} is out of range: the world has {world_size} ranks "
            f"(0 to {world_size - 1})."
        )
    return int(root_rank)


def check_reducible(dtype: np.dtype, op: ReduceOp, prescale: float, postscale: float) -> None:
    """Refuses reductions whose result the dtype cannot hold exactly."""
    if np.issubdtype(dtype, np.floating):
        return
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"allreduce supports floating and integer tensors, not {dtype}.")
    if op is ReduceOp.AVERAGE:
        raise ValueError(
            f"allreduce with op=Average on an integer tensor ({dtype}) would truncate the "
            "average; use op=Sum, or cast the tensor to a floating type first."
        )
    if prescale != 1.0 or postscale != 1.0:
        raise ValueError(
            f"prescale_factor and postscale_factor must be 1 for integer tensors ({dtype})."
        )


def allreduce(
    arrays: Sequence[np.ndarray],
    op: ReduceOp = ReduceOp.AVERAGE,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    name: str = "allreduce",
    may_wait: bool = False,
    tensor_specs: Sequence[TensorSpec] | None = None,
) -> list[np.ndarray]:
    """Reduces each array across ranks, all in one fused communication per dtype.

    Each array is multiplied by ``prescale_factor`` before the sum and the result by
    ``postscale_factor`` after it (and divided by the world size for ``Average``).
    Returns new arrays; the inputs are not modified.

    A caller that packed several tensors into one array gives their ``(dtype, shape)`` in
    ``tensor_specs``; the ranks then compare those instead of the arrays' own shapes.
    """
    world = current("allreduce")
    op = check_reduce_op(op)
    arrays = [np.asarray(a) for a in arrays]
    for dtype in {array.dtype for array in arrays}:
        check_reducible(dtype, op, prescale_factor, postscale_factor)

    def reduce(comm: MPI.Comm, flagged: bool) -> tuple[bool, list[np.ndarray] | None]:
        results: list[np.ndarray | None] = [None] * len(arrays)
        final_scale = postscale_factor / (world.size if op is ReduceOp.AVERAGE else 1)
        for index, positions in enumerate(fusion.group_by_dtype(arrays).values()):
            members = [arrays[p] for p in positions]
            first = index == 0
            buffer = fusion.fuse(members, prescale_factor, extra=1 if first else 0)
            if first:
                request.decoy = _decoy(buffer.dtype, buffer.size)
                buffer[-1] = 0  # the flag: stays 0 unless a rank sent a decoy
                data = buffer.size - 1
                _sum_in_place(comm, buffer if flagged else buffer[:data], final_scale, data)
                if buffer[-1] != 0:
                    return False, None
                buffer = buffer[:data]
            else:
                _sum_in_place(comm, buffer, final_scale)
            for position, view in zip(
                positions, fusion.unfuse(buffer, [m.shape for m in members]), strict=True
            ):
                results[position] = view
        return True, results

    signature = {
        "op": op.value,
        "tensors": _tensor_signature(arrays, tensor_specs),
        "prescale_factor": prescale_factor,
        "postscale_factor": postscale_factor,
    }
    request = coordinator.Request(
        "allreduce",
        name,
        signature,
        execute=lambda comm: reduce(comm, flagged=False)[1],
        may_wait=may_wait,
        execute_flagged=(lambda comm: reduce(comm, flagged=True)) if arrays else None,
    )
    return coordinator.run(world, request)


def _decoy(dtype: np.dtype, size: int):
    """Sends what a rank whose call differs from the predicted one sends: zeros of the
    predicted first message's size, with its flag element raised."""

    def send(comm: MPI.Comm) -> None:
        buffer = np.zeros(size, dtype=dtype)
        buffer[-1] = 1
        _sum_in_place(comm, buffer)

    return send


def broadcast(
    arrays: Sequence[np.ndarray],
    root_rank: int,
    name: str = "broadcast",
    may_wait: bool = False,
    tensor_specs: Sequence[TensorSpec] | None = None,
) -> list[np.ndarray]:
    """Returns copies of ``root_rank``'s arrays on every rank, one communication per dtype.

    ``tensor_specs`` is as for ``allreduce``.
    """
    world = current("broadcast")
    root_rank = check_root_rank(root_rank, world.size)
    arrays = [np.asarray(a) for a in arrays]

    def execute(comm: MPI.Comm) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(arrays)
        for positions in fusion.group_by_dtype(arrays).values():
            members = [arrays[p] for p in positions]
            buffer = fusion.fuse(members)
            if comm.Get_size() > 1:
                comm.Bcast(buffer.view(np.uint8), root=root_rank)
            for position, view in zip(
                positions, fusion.unfuse(buffer, [m.shape for m in members]), strict=True
            ):
                results[position] = view
        return results  # type: ignore[return-value]

    signature = {"root_rank": root_rank, "tensors": _tensor_signature(arrays, tensor_specs)}
    return coordinator.run(
        world, coordinator.Request("broadcast", name, signature, execute, may_wait)
    )


def allgather(array: np.ndarray, name: str = "allgather", may_wait: bool = False) -> np.ndarray:
    """Concatenates every rank's ``array`` along the first dimension, in rank order.

    The first dimension may differ between ranks; the others, and the dtype, may not.
    """
    world = current("allgather")
    array = np.ascontiguousarray(array)
    if array.ndim == 0:
        array = array.reshape(1)
    row_shape = array.shape[1:]

    def execute(comm: MPI.Comm) -> np.ndarray:
        rows = comm.allgather(array.shape[0])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * array.dtype.itemsize
        gathered = np.empty((sum(rows), *row_shape), dtype=array.dtype)
        counts = [r * row_bytes for r in rows]
        comm.Allgatherv(array.view(np.uint8).reshape(-1), [gathered.view(np.uint8), counts])
        return gathered

    signature = {"tensors": [(str(array.dtype), ("*", *row_shape))]}
    return coordinator.run(
        world, coordinator.Request("allgather", name, signature, execute, may_wait)
    )


def broadcast_object(obj: Any, root_rank: int = 0, name: str = "broadcast_object") -> Any:
    """Returns ``root_rank``'s picklable ``obj`` on every rank."""
    world = current("broadcast_object")
    root_rank = check_root_rank(root_rank, world.size)
    request = coordinator.Request(
        "broadcast_object", name, {"root_rank": root_rank}, lambda comm: comm.bcast(obj, root_rank)
    )
    return coordinator.run(world, request)


def barrier(name: str = "barrier", may_wait: bool = False) -> None:
    """Returns once every rank has reached its matching ``barrier``."""
    world = current("barrier")
    request = coordinator.Request("barrier", name, {}, lambda comm: comm.Barrier(), may_wait)
    coordinator.run(world, request)
