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

from gradsync.engine import coordinator, fusion, link, timeline
from gradsync.engine.process_sets import Group, ProcessSet, group_of
from gradsync.engine.reduce_ops import ReduceOp, check_reduce_op
from gradsync.engine.world import current

_ELEMENTWISE = {
    ReduceOp.SUM: (MPI.SUM, np.add),
    ReduceOp.AVERAGE: (MPI.SUM, np.add),
    ReduceOp.MIN: (MPI.MIN, np.minimum),
    ReduceOp.MAX: (MPI.MAX, np.maximum),
    ReduceOp.PRODUCT: (MPI.PROD, np.multiply),
}
_float16_ops: dict[ReduceOp, MPI.Op] = {}


def _float16_op(op: ReduceOp) -> MPI.Op:
    """MPI has no half-precision type; a user-defined op over 16-bit words stands in."""
    if op not in _float16_ops:
        combine = _ELEMENTWISE[op][1]

        def apply(source, target, datatype) -> None:
            out = np.frombuffer(target, dtype=np.float16)
            combine(out, np.frombuffer(source, dtype=np.float16), out=out)

        _float16_ops[op] = MPI.Op.Create(apply, commute=True)
    return _float16_ops[op]


def _mpi_buffer(array: np.ndarray, op: ReduceOp) -> tuple[Any, MPI.Op]:
    """``array`` as MPI sees it, and the MPI op that reduces it."""
    if array.dtype == np.float16:
        return [array.view(np.uint16), MPI.UINT16_T], _float16_op(op)
    return array, _ELEMENTWISE[op][0]


# Large buffers are reduced in pieces of this many bytes: MPICH reduces several mid-sized
# messages much faster than one very large one (between 2 local ranks, 42 MB of float32 took
# 17 ms in one call and 5 ms in 4 MiB pieces). Every rank cuts the same pieces.
CHUNK_BYTES = 4 << 20


def _scale(array: np.ndarray, factor: float) -> None:
    """Multiplies ``array`` by ``factor`` in place; integers are truncated toward zero, as C
    converts a double to an integer (and as Horovod scales integer tensors)."""
    if factor != 1.0:
        np.multiply(array, factor, out=array, casting="unsafe")


def _reduce_in_place(
    comm: MPI.Comm,
    buffer: np.ndarray,
    op: ReduceOp = ReduceOp.SUM,
    scale: float = 1.0,
    flag: int | None = None,
) -> bool:
    """Reduces ``buffer`` across ranks in place and multiplies it by ``scale``, each piece
    right after its reduction, while it is in cache.

    With ``flag`` (an index in the first piece), a rank whose call differs from the others'
    raises that element: every rank sees it once the first piece is reduced, and then stops
    and returns False, so a mismatch costs one piece whatever the buffer's size.
    """
    step = _piece_elements(buffer.dtype)
    for start in range(0, max(buffer.size, 1), step):
        piece = buffer[start : start + step]
        if comm.Get_size() > 1:
            message, mpi_op = _mpi_buffer(piece, op)
            comm.Allreduce(MPI.IN_PLACE, message, op=mpi_op)
            link.wait_as_on_link(piece.nbytes, comm.Get_size())
        if flag is not None and start == 0 and buffer[flag] != 0:
            return False
        _scale(piece, scale)
    return True


def _piece_elements(dtype: np.dtype) -> int:
    """How many elements of ``dtype`` one message carries."""
    return max(1, CHUNK_BYTES // dtype.itemsize)


def _flag_slot(dtype: np.dtype) -> int:
    """Elements before the first buffer's data on the predicted path: the flag, padded so
    that the data after it stays aligned."""
    return max(1, fusion.ALIGNMENT // dtype.itemsize)


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)


TensorSpec = tuple[np.dtype, tuple[int, ...]]


def _tensor_signature(
    arrays: Sequence[np.ndarray], tensor_specs: Sequence[TensorSpec] | None = None
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """What the ranks compare about the tensors: each one's dtype and shape."""
    if tensor_specs is None:
        tensor_specs = [(a.dtype, a.shape) for a in arrays]
    return _spec_names(tuple(tensor_specs))


@functools.lru_cache(maxsize=256)
def _spec_names(
    tensor_specs: tuple[TensorSpec, ...],
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The dtype names and shapes of ``tensor_specs``, worked out once per list of tensors."""
    return tuple((_dtype_name(dtype), tuple(shape)) for dtype, shape in tensor_specs)


def _layout(arrays: Sequence[np.ndarray]) -> tuple[tuple[str, int], ...]:
    """How the tensors travel: the dtype and size of each array the caller packed them in.
    Ranks that packed the same tensors differently cannot share fused buffers."""
    return tuple((_dtype_name(a.dtype), a.size) for a in arrays)


def check_root_rank(root_rank: object, world_size: int) -> int:
    """Returns ``root_rank`` if it names a rank of the group, else raises a clear error."""
    if isinstance(root_rank, bool) or not isinstance(root_rank, (int, np.integer)):
        raise ValueError(f"root_rank must be an integer rank, got {root_rank!r}.")
    if not 0 <= root_rank < world_size:
        raise ValueError(
            f"root_rank={root_rank} is out of range: the world has {world_size} ranks "
            f"(0 to {world_size - 1})."
        )
    return int(root_rank)


def check_reducible(dtype: np.dtype) -> None:
    """Refuses dtypes that cannot be reduced (anything but floating and integer numbers)."""
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise TypeError(f"reductions support floating and integer tensors, not {dtype}.")


def _refuse(group: Group, kind: str, name: str, may_wait: bool, error: Exception) -> Any:
    """Reports an argument error in the collective it belongs to, on every rank of the group.

    The error travels as the call's signature: where every rank refused alike, each raises
    the error itself; where only some did, every rank gets a ``CollectiveMismatchError``
    naming the rank and its reason. Either way no rank is left waiting in the collective.
    """

    def execute(comm: MPI.Comm) -> None:
        raise error

    reason = f"{type(error).__name__}: {error}"
    return group.coordinator.run(
        coordinator.Request(kind, name, {"refused": reason}, execute, may_wait)
    )


def _allreduce_request(
    group: Group,
    arrays: list[np.ndarray],
    op: ReduceOp,
    prescale_factor: float,
    postscale_factor: float,
    name: str,
    may_wait: bool,
    tensor_specs: Sequence[TensorSpec] | None,
) -> coordinator.Request:
    # Sum and Average travel with the flag element of the predicted path; Min, Max and
    # Product always negotiate (a flag cannot be combined by them).
    flaggable = op in (ReduceOp.SUM, ReduceOp.AVERAGE)
    final_scale = postscale_factor / (group.size if op is ReduceOp.AVERAGE else 1)

    def reduce(comm: MPI.Comm, flagged: bool) -> tuple[bool, list[np.ndarray] | None]:
        results: list[np.ndarray | None] = [None] * len(arrays)
        for index, positions in enumerate(fusion.group_by_dtype(arrays).values()):
            members = [arrays[p] for p in positions]
            first = index == 0 and flaggable
            slot = _flag_slot(members[0].dtype) if first else 0
            buffer = fusion.fuse(members, prescale_factor, front=slot)
            if first:
                first_message = min(_piece_elements(buffer.dtype), buffer.size)
                request.decoy = _decoy(buffer.dtype, first_message)
                buffer[:slot] = 0  # the flag (first): stays 0 unless a rank sent a decoy
                if flagged:
                    if not _reduce_in_place(comm, buffer, op, final_scale, flag=0):
                        return False, None
                else:
                    _reduce_in_place(comm, buffer[slot:], op, final_scale)
                buffer = buffer[slot:]
            else:
                _reduce_in_place(comm, buffer, op, final_scale)
            for position, view in zip(
                positions, fusion.unfuse(buffer, [m.shape for m in members]), strict=True
            ):
                results[position] = view
        return True, results

    signature = {
        "op": op.value,
        "tensors": _tensor_signature(arrays, tensor_specs),
        "layout": _layout(arrays),
        "prescale_factor": prescale_factor,
        "postscale_factor": postscale_factor,
    }

    def stand_in() -> dict[str, Any]:
        return {
            "arrays": [(a.dtype.str, a.shape) for a in arrays],
            "tensor_specs": [(np.dtype(d).str, tuple(s)) for d, s in tensor_specs]
            if tensor_specs is not None
            else None,
            "op": op.value,
            "prescale_factor": prescale_factor,
            "postscale_factor": postscale_factor,
            "may_wait": may_wait,
        }

    request = coordinator.Request(
        "allreduce",
        name,
        signature,
        execute=lambda comm: reduce(comm, flagged=False)[1],
        may_wait=may_wait,
        execute_flagged=(lambda comm: reduce(comm, flagged=True)) if arrays and flaggable else None,
        stand_in_spec=stand_in if flaggable else None,
    )
    return request


def _allreduce_stand_in(spec: dict[str, Any], name: str) -> coordinator.Request:
    """The allreduce a joined rank takes part in: zeros of the other ranks' arrays."""
    group = group_of(None, "join")
    arrays = [np.zeros(shape, np.dtype(dtype)) for dtype, shape in spec["arrays"]]
    specs = spec["tensor_specs"]
    if specs is not None:
        specs = [(np.dtype(dtype), tuple(shape)) for dtype, shape in specs]
    return _allreduce_request(
        group,
        arrays,
        ReduceOp(spec["op"]),
        spec["prescale_factor"],
        spec["postscale_factor"],
        name,
        spec["may_wait"],
        specs,
    )


coordinator.register_stand_in("allreduce", _allreduce_stand_in)


def allreduce(
    arrays: Sequence[np.ndarray],
    op: ReduceOp = ReduceOp.AVERAGE,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    name: str = "allreduce",
    may_wait: bool = False,
    tensor_specs: Sequence[TensorSpec] | None = None,
    process_set: ProcessSet | None = None,
) -> list[np.ndarray]:
    """Reduces each array across the ranks of ``process_set`` (all ranks by default), all in
    one fused communication per dtype.

    ``op`` is Sum, Average, Min, Max or Product. Each array is multiplied by
    ``prescale_factor`` before the reduction and the result by ``postscale_factor`` after it
    (and divided by the number of ranks for Average); integer results are truncated toward
    zero. Returns new arrays; the inputs are not modified.

    A caller that packed several tensors into one array gives their ``(dtype, shape)`` in
    ``tensor_specs``; the ranks then compare those instead of the arrays' own shapes.
    """
    group = group_of(process_set, "allreduce")
    arrays = [np.asarray(a) for a in arrays]
    try:
        op = check_reduce_op(op)
        for dtype in {array.dtype for array in arrays}:
            check_reducible(dtype)
    except (ValueError, TypeError, NotImplementedError) as error:
        return _refuse(group, "allreduce", name, may_wait, error)
    request = _allreduce_request(
        group, arrays, op, prescale_factor, postscale_factor, name, may_wait, tensor_specs
    )
    return group.coordinator.run(request)


def _decoy(dtype: np.dtype, size: int):
    """Sends what a rank whose call differs from the predicted one sends: zeros of the
    predicted first message's size, with its flag element raised."""

    def send(comm: MPI.Comm) -> None:
        buffer = np.zeros(size, dtype=dtype)
        buffer[0] = 1
        _reduce_in_place(comm, buffer)

    return send


def reducescatter(
    arrays: Sequence[np.ndarray],
    op: ReduceOp = ReduceOp.AVERAGE,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    name: str = "reducescatter",
    may_wait: bool = False,
    process_set: ProcessSet | None = None,
) -> list[np.ndarray]:
    """Reduces each array across ranks (Sum or Average) and hands each rank a block of the
    result's rows: of ``n`` rows among ``k`` ranks, the first ``n % k`` ranks get
    ``n // k + 1`` rows and the others ``n // k``, in rank order.

    Every dtype travels in one ``MPI_Reduce_scatter``, so each rank receives only its rows.
    """
    group = group_of(process_set, "reducescatter")
    arrays = [np.ascontiguousarray(a) for a in arrays]
    try:
        op = check_reduce_op(op, (ReduceOp.SUM, ReduceOp.AVERAGE))
        for array in arrays:
            check_reducible(array.dtype)
            if array.ndim == 0:
                raise ValueError("reducescatter needs tensors of at least one dimension.")
    except (ValueError, TypeError, NotImplementedError) as error:
        return _refuse(group, "reducescatter", name, may_wait, error)
    final_scale = postscale_factor / (group.size if op is ReduceOp.AVERAGE else 1)

    def execute(comm: MPI.Comm) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(arrays)
        for positions in fusion.group_by_dtype(arrays).values():
            members = [arrays[p] for p in positions]
            blocks = [split_rows(m.shape[0], group.size) for m in members]
            # Rank-major: all of rank 0's rows of every member, then rank 1's, ...
            pieces = [
                m[block[r] : block[r + 1]].reshape(-1)
                for r in range(group.size)
                for m, block in zip(members, blocks, strict=True)
            ]
            send = np.concatenate(pieces) if pieces else np.zeros(0, members[0].dtype)
            _scale(send, prescale_factor)
            row_sizes = [int(np.prod(m.shape[1:])) for m in members]
            counts = [
                sum(size * (b[r + 1] - b[r]) for size, b in zip(row_sizes, blocks, strict=True))
                for r in range(group.size)
            ]
            received = np.empty(counts[group.rank], send.dtype)
            if comm.Get_size() > 1:
                (send_buf, mpi_op), (recv_buf, _) = _mpi_buffer(send, op), _mpi_buffer(received, op)
                comm.Reduce_scatter(send_buf, recv_buf, counts, op=mpi_op)
            else:
                received[...] = send
            _scale(received, final_scale)
            offset = 0
            for position, member, block in zip(positions, members, blocks, strict=True):
                rows = block[group.rank + 1] - block[group.rank]
                count = rows * int(np.prod(member.shape[1:]))
                results[position] = received[offset : offset + count].reshape(
                    (rows, *member.shape[1:])
                )
                offset += count
        return results  # type: ignore[return-value]

    signature = {
        "op": op.value,
        "tensors": _tensor_signature(arrays),
        "prescale_factor": prescale_factor,
        "postscale_factor": postscale_factor,
    }
    request = coordinator.Request("reducescatter", name, signature, execute, may_wait)
    return group.coordinator.run(request)


def split_rows(rows: int, ranks: int) -> list[int]:
    """Where each rank's block of ``rows`` begins (and, last, where the final one ends) when
    they are shared as evenly as possible, the first ranks taking one more."""
    base, extra = divmod(rows, ranks)
    bounds = [0]
    for r in range(ranks):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return bounds


def broadcast(
    arrays: Sequence[np.ndarray],
    root_rank: int,
    name: str = "broadcast",
    may_wait: bool = False,
    tensor_specs: Sequence[TensorSpec] | None = None,
    process_set: ProcessSet | None = None,
) -> list[np.ndarray]:
    """Returns copies of ``root_rank``'s arrays on every rank, one communication per dtype.

    ``root_rank`` is a rank of ``process_set`` (of the world by default). ``tensor_specs`` is
    as for ``allreduce``.
    """
    group = group_of(process_set, "broadcast")
    arrays = [np.asarray(a) for a in arrays]
    try:
        root_rank = check_root_rank(root_rank, group.size)
    except ValueError as error:
        return _refuse(group, "broadcast", name, may_wait, error)

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

    signature = {
        "root_rank": root_rank,
        "tensors": _tensor_signature(arrays, tensor_specs),
        "layout": _layout(arrays),
    }
    return group.coordinator.run(
        coordinator.Request("broadcast", name, signature, execute, may_wait)
    )


def allgather(
    arrays: Sequence[np.ndarray],
    name: str = "allgather",
    may_wait: bool = False,
    process_set: ProcessSet | None = None,
) -> list[np.ndarray]:
    """Concatenates every rank's arrays along their first dimension, in rank order.

    The first dimension may differ between ranks; the others, and the dtype, may not.
    Scalars are gathered as arrays of one element.
    """
    group = group_of(process_set, "allgather")
    arrays = [
        np.ascontiguousarray(a).reshape(-1) if np.ndim(a) == 0 else np.ascontiguousarray(a)
        for a in arrays
    ]

    def execute(comm: MPI.Comm) -> list[np.ndarray]:
        everyone_rows = comm.allgather([a.shape[0] for a in arrays])
        results = []
        for index, array in enumerate(arrays):
            rows = [their_rows[index] for their_rows in everyone_rows]
            row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
            gathered = np.empty((sum(rows), *array.shape[1:]), dtype=array.dtype)
            counts = [r * row_bytes for r in rows]
            comm.Allgatherv(array.view(np.uint8).reshape(-1), [gathered.view(np.uint8), counts])
            results.append(gathered)
        return results

    signature = {"tensors": tuple((str(a.dtype), ("*", *a.shape[1:])) for a in arrays)}
    return group.coordinator.run(
        coordinator.Request("allgather", name, signature, execute, may_wait)
    )


def alltoall(
    array: np.ndarray,
    splits: Sequence[int] | None = None,
    name: str = "alltoall",
    may_wait: bool = False,
    process_set: ProcessSet | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sends ``splits[j]`` consecutive rows of ``array`` to rank ``j``; returns the rows
    received from every rank, in rank order, and how many came from each.

    Without ``splits`` the first dimension is shared evenly (it must divide by the number
    of ranks). The trailing dimensions and the dtype must agree between ranks.
    """
    group = group_of(process_set, "alltoall")
    array = np.ascontiguousarray(array)
    try:
        if array.ndim == 0:
            raise ValueError("alltoall needs a tensor of at least one dimension.")
        send_splits = _check_splits(array.shape[0], splits, group.size)
    except ValueError as error:
        return _refuse(group, "alltoall", name, may_wait, error)
    row_shape = array.shape[1:]

    def execute(comm: MPI.Comm) -> tuple[np.ndarray, np.ndarray]:
        received_splits = np.empty(group.size, np.int64)
        comm.Alltoall(send_splits, received_splits)
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * array.dtype.itemsize
        received = np.empty((int(received_splits.sum()), *row_shape), array.dtype)
        send_counts = send_splits * row_bytes
        receive_counts = received_splits * row_bytes
        comm.Alltoallv(
            [array.view(np.uint8).reshape(-1), (send_counts, _displacements(send_counts))],
            [received.view(np.uint8).reshape(-1), (receive_counts, _displacements(receive_counts))],
        )
        return received, received_splits.astype(np.int32)

    signature = {"tensors": ((str(array.dtype), ("*", *row_shape)),)}
    return group.coordinator.run(
        coordinator.Request("alltoall", name, signature, execute, may_wait)
    )


def _check_splits(rows: int, splits: Sequence[int] | None, ranks: int) -> np.ndarray:
    if splits is None:
        if rows % ranks:
            raise ValueError(
                f"alltoall without splits shares the first dimension evenly, but {rows} rows "
                f"do not divide among {ranks} ranks: pass splits=[rows for each rank]."
            )
        return np.full(ranks, rows // ranks, np.int64)
    splits = np.asarray(splits, dtype=np.int64).reshape(-1)
    if splits.size != ranks or (splits < 0).any() or splits.sum() != rows:
        raise ValueError(
            f"alltoall splits must hold {ranks} non-negative row counts (one per rank) that "
            f"add up to the first dimension, {rows}; got {splits.tolist()}."
        )
    return splits


def _displacements(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def broadcast_object(
    obj: Any,
    root_rank: int = 0,
    name: str = "broadcast_object",
    process_set: ProcessSet | None = None,
) -> Any:
    """Returns ``root_rank``'s picklable ``obj`` on every rank."""
    group = group_of(process_set, "broadcast_object")
    try:
        root_rank = check_root_rank(root_rank, group.size)
    except ValueError as error:
        return _refuse(group, "broadcast_object", name, False, error)
    request = coordinator.Request(
        "broadcast_object", name, {"root_rank": root_rank}, lambda comm: comm.bcast(obj, root_rank)
    )
    return group.coordinator.run(request)


def allgather_object(
    obj: Any, name: str = "allgather_object", process_set: ProcessSet | None = None
) -> list[Any]:
    """Returns the list of every rank's picklable ``obj``, in rank order."""
    group = group_of(process_set, "allgather_object")
    request = coordinator.Request("allgather_object", name, {}, lambda comm: comm.allgather(obj))
    return group.coordinator.run(request)


def barrier(
    name: str = "barrier", may_wait: bool = False, process_set: ProcessSet | None = None
) -> None:
    """Returns once every rank has reached its matching ``barrier``."""
    group = group_of(process_set, "barrier")
    request = coordinator.Request("barrier", name, {}, lambda comm: comm.Barrier(), may_wait)
    group.coordinator.run(request)


def join() -> int:
    """Declares that this rank has no more data: until every rank has joined, it takes part
    in the others' allreduces (Sum and Average) with zeros. Returns the rank that joined
    last, on every rank."""
    return current("join").coordinator.join()


def start_timeline(file_path: str, mark_cycles: bool = False) -> None:
    """Starts recording a timeline of this rank's collectives (see ``timeline``); call it on
    every rank. ``GRADSYNC_TIMELINE=path`` starts one at ``init``."""
    current("start_timeline")
    timeline.start(file_path, mark_cycles)


def stop_timeline() -> None:
    """Stops recording, on every rank alike; rank 0 writes every rank's spans to the file."""
    world = current("stop_timeline")
    path, spans, origin, mark_cycles = timeline.take()

    def gather(comm: MPI.Comm) -> None:
        everyone = comm.gather((path, spans, origin), root=0)
        if world.rank == 0 and path is not None:
            timeline.write(
                path, [s for _, s, _ in everyone], [o for _, _, o in everyone], mark_cycles
            )

    world.coordinator.run(coordinator.Request("stop_timeline", "timeline", {}, gather))
