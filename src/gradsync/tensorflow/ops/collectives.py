"""Collectives on ``tf.Tensor`` and ``tf.Variable``, under Horovod's names and signatures.

Each works eagerly, inside ``tf.function`` and in ``tf.compat.v1`` graphs run by a Session,
and each tensor collective has a gradient, as in Horovod. ``device_dense``, ``device_sparse``
and ``ignore_name_scope`` are accepted for compatibility: gradsync communicates from host
memory and names its collectives by their place in the program.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from gradsync import engine
from gradsync.engine import ProcessSet, ReduceOp, global_process_set
from gradsync.tensorflow.ops.bridge import call_engine
from gradsync.tensorflow.ops.compression import Compression, Compressor, check_compression

_RANK_LOCAL_ATTRIBUTE = "_gradsync_rank_local"
RANK_LOCAL_COLLECTION = "gradsync_rank_local"


def mark_rank_local(variable: tf.Variable) -> tf.Variable:
    """Marks state that differs between ranks by design, so broadcasts leave it alone."""
    setattr(variable, _RANK_LOCAL_ATTRIBUTE, True)
    return variable


def is_rank_local(variable: Any) -> bool:
    """Whether ``variable`` was marked by ``mark_rank_local``."""
    return bool(getattr(variable, _RANK_LOCAL_ATTRIBUTE, False))


def resolve_op(op: ReduceOp | None, average: bool | None) -> ReduceOp:
    """Horovod's ``average=`` (deprecated) and ``op=`` as one op: Average by default."""
    if op is not None and average is not None:
        raise ValueError("The op parameter supersedes average. Please provide only one of them.")
    if average is not None:
        warnings.warn(
            "Parameter `average` has been replaced with `op` and will be removed in v1.0",
            DeprecationWarning,
            stacklevel=3,
        )
        return ReduceOp.AVERAGE if average else ReduceOp.SUM
    return ReduceOp.AVERAGE if op is None else op


def _kind(kind: str, process_set: ProcessSet) -> str:
    """The kind of collective as ops are named by it: a process set's collectives are counted
    apart, so that building them on the set's ranks only leaves the names of the world's
    collectives in a v1 graph the same on every rank."""
    if process_set is global_process_set or process_set.process_set_id in (None, 0):
        return kind
    return f"{kind}_in_set{process_set.process_set_id}"


def _group_size(process_set: ProcessSet) -> int:
    return engine.group_of(process_set, "a collective").size


def _group_rank(process_set: ProcessSet) -> int:
    return engine.group_of(process_set, "a collective").rank


def _fused_allreduce(
    tensors: Sequence[tf.Tensor],
    op: ReduceOp,
    prescale_factor: float,
    postscale_factor: float,
    name: str | None,
    process_set: ProcessSet,
) -> list[tf.Tensor]:
    """One engine call for all of ``tensors``; differentiable (the gradient is an allreduce
    with the same op and factors, as in Horovod)."""

    def engine_call(arrays, key, may_wait, specs):
        return engine.allreduce(
            arrays, op, prescale_factor, postscale_factor, key, may_wait, specs, process_set
        )

    def gradient(upstream: list[tf.Tensor]) -> list[tf.Tensor]:
        return _fused_allreduce(upstream, op, prescale_factor, postscale_factor, None, process_set)

    return call_engine(
        engine_call,
        tensors,
        _kind("allreduce", process_set),
        name,
        elementwise=True,
        gradient=gradient,
    )


def _sparse_allreduce(
    slices: tf.IndexedSlices,
    op: ReduceOp,
    prescale_factor: float,
    postscale_factor: float,
    name: str | None,
    process_set: ProcessSet,
) -> tf.IndexedSlices:
    """Reduces IndexedSlices by gathering every rank's values and indices."""
    if op not in (ReduceOp.SUM, ReduceOp.AVERAGE):
        raise NotImplementedError(
            "Only Sum and Average ops are supported with tf.IndexedSlices "
            f"(got {op.name.title()}); densify the gradient (sparse_as_dense=True) for others."
        )
    values, indices = grouped_allgather(
        [slices.values, slices.indices], name=name, process_set=process_set
    )
    scale = prescale_factor * postscale_factor
    if op is ReduceOp.AVERAGE:
        scale /= _group_size(process_set)
    if scale != 1.0:
        values = values * tf.cast(scale, values.dtype)
    return tf.IndexedSlices(values, indices, dense_shape=slices.dense_shape)


def grouped_allreduce(
    tensors: Sequence[tf.Tensor | tf.IndexedSlices | tf.Variable],
    average: bool | None = None,
    device_dense: str = "",
    device_sparse: str = "",
    compression: Compressor = Compression.none,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
    ignore_name_scope: bool = False,
    name: str | None = None,
) -> list[tf.Tensor | tf.IndexedSlices]:
    """Reduces every tensor of the list across ranks in one fused communication.

    ``op`` is Average (the default), Sum, Min, Max or Product; ``prescale_factor`` multiplies
    each input before the reduction and ``postscale_factor`` the result (integer results are
    truncated toward zero, as Horovod's). ``tf.IndexedSlices`` are gathered (values and
    indices) rather than densified. Returns the results in the order of ``tensors``.
    """
    op = engine.check_reduce_op(resolve_op(op, average))
    compression = check_compression(compression)
    results: list[Any] = [None] * len(tensors)
    dense_positions, compressed, contexts = [], [], []
    for position, tensor in enumerate(tensors):
        if isinstance(tensor, tf.IndexedSlices):
            results[position] = _sparse_allreduce(
                tensor, op, prescale_factor, postscale_factor, name, process_set
            )
            continue
        sent, context = compression.compress(tf.convert_to_tensor(tensor))
        dense_positions.append(position)
        compressed.append(sent)
        contexts.append(context)
    if compressed:
        reduced = _fused_allreduce(
            compressed, op, prescale_factor, postscale_factor, name, process_set
        )
        for position, tensor, context in zip(dense_positions, reduced, contexts, strict=True):
            results[position] = compression.decompress(tensor, context)
    return results


def allreduce(
    tensor: tf.Tensor | tf.IndexedSlices | tf.Variable,
    average: bool | None = None,
    device_dense: str = "",
    device_sparse: str = "",
    compression: Compressor = Compression.none,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
    ignore_name_scope: bool = False,
) -> tf.Tensor | tf.IndexedSlices:
    """Reduces ``tensor`` across ranks (see ``grouped_allreduce``); differentiable."""
    return grouped_allreduce(
        [tensor],
        average,
        compression=compression,
        op=op,
        prescale_factor=prescale_factor,
        postscale_factor=postscale_factor,
        process_set=process_set,
        name=name,
    )[0]


def grouped_reducescatter(
    tensors: Sequence[tf.Tensor | tf.Variable],
    device_dense: str = "",
    compression: Compressor = Compression.none,
    op: ReduceOp = ReduceOp.AVERAGE,
    process_set: ProcessSet = global_process_set,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    name: str | None = None,
) -> list[tf.Tensor]:
    """Reduces each tensor across ranks (Sum or Average) and returns this rank's block of the
    result's rows: of ``n`` rows among ``k`` ranks, the first ``n % k`` ranks get one row more
    than the others. One fused communication; differentiable (the gradient is an allgather).
    """
    op = engine.check_reduce_op(op)
    compression = check_compression(compression)
    pairs = [compression.compress(tf.convert_to_tensor(t)) for t in tensors]
    sent, contexts = [p[0] for p in pairs], [p[1] for p in pairs]

    @tf.custom_gradient
    def scatter(*inputs):
        def engine_call(arrays, key, may_wait, specs):
            return engine.reducescatter(
                arrays, op, prescale_factor, postscale_factor, key, may_wait, process_set
            )

        shapes = [tf.TensorShape([None]).concatenate(t.shape[1:]) for t in inputs]
        outputs = call_engine(
            engine_call, inputs, _kind("reducescatter", process_set), name, output_shapes=shapes
        )

        def gradient(*upstream):
            # As Horovod: the gathered gradient, times the size for Sum and the factors.
            gathered = grouped_allgather(list(upstream), process_set=process_set)
            scale = prescale_factor * postscale_factor
            if op is ReduceOp.SUM:
                scale *= _group_size(process_set)
            return [g * tf.cast(scale, g.dtype) if scale != 1.0 else g for g in gathered]

        return outputs, gradient

    reduced = scatter(*sent)
    return [compression.decompress(t, c) for t, c in zip(reduced, contexts, strict=True)]


def reducescatter(
    tensor: tf.Tensor | tf.Variable,
    device_dense: str = "",
    compression: Compressor = Compression.none,
    op: ReduceOp = ReduceOp.AVERAGE,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
    ignore_name_scope: bool = False,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> tf.Tensor:
    """This rank's block of ``tensor`` reduced across ranks (see ``grouped_reducescatter``)."""
    return grouped_reducescatter(
        [tensor],
        compression=compression,
        op=op,
        process_set=process_set,
        prescale_factor=prescale_factor,
        postscale_factor=postscale_factor,
        name=name,
    )[0]


def grouped_allgather(
    tensors: Sequence[tf.Tensor | tf.Variable],
    name: str | None = None,
    ignore_name_scope: bool = False,
    process_set: ProcessSet = global_process_set,
) -> list[tf.Tensor]:
    """Concatenates every rank's tensors along their first dimension, in rank order, in one
    negotiation. The first dimension may differ between ranks. Differentiable: each rank gets
    its own rows of the gradient averaged over ranks, as in Horovod."""
    tensors = [tf.convert_to_tensor(t) for t in tensors]

    @tf.custom_gradient
    def gather(*inputs):
        def engine_call(arrays, key, may_wait, specs):
            return engine.allgather(arrays, key, may_wait, process_set)

        shapes = [
            tf.TensorShape([None]).concatenate(t.shape[1:]) if t.shape.rank else [None]
            for t in inputs
        ]
        outputs = call_engine(
            engine_call, inputs, _kind("allgather", process_set), name, output_shapes=shapes
        )

        def gradient(*upstream):
            summed = _fused_allreduce(upstream, ReduceOp.AVERAGE, 1.0, 1.0, None, process_set)
            rows = [tf.reshape(tf.shape(t)[0] if t.shape.rank else 1, [1]) for t in inputs]
            everyone_rows = grouped_allgather(rows, process_set=process_set)
            me = _group_rank(process_set)
            pieces = []
            for grad, counts, original in zip(summed, everyone_rows, inputs, strict=True):
                start = tf.reduce_sum(counts[:me])
                piece = grad[start : start + counts[me]]
                pieces.append(tf.reshape(piece, tf.shape(original)))
            return pieces

        return outputs, gradient

    return list(gather(*tensors))


def allgather(
    tensor: tf.Tensor | tf.Variable,
    name: str | None = None,
    ignore_name_scope: bool = False,
    process_set: ProcessSet = global_process_set,
) -> tf.Tensor:
    """Concatenates every rank's ``tensor`` along the first dimension, in rank order."""
    return grouped_allgather([tensor], name=name, process_set=process_set)[0]


def alltoall(
    tensor: tf.Tensor | tf.Variable,
    splits: Sequence[int] | tf.Tensor | None = None,
    name: str | None = None,
    ignore_name_scope: bool = False,
    process_set: ProcessSet = global_process_set,
) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
    """Sends ``splits[j]`` consecutive rows of ``tensor`` to rank ``j`` (the first dimension
    shared evenly without ``splits``); returns the rows received from every rank, in rank
    order, and, when ``splits`` were given, how many came from each (int32), as Horovod.
    Differentiable: the gradient travels back to where the rows came from."""
    tensor = tf.convert_to_tensor(tensor)
    inputs = [tensor] if splits is None else [tensor, tf.convert_to_tensor(splits, tf.int32)]

    @tf.custom_gradient
    def exchange(values):
        def engine_call(arrays, key, may_wait, specs):
            chosen = None if len(arrays) == 1 else arrays[1]
            return engine.alltoall(arrays[0], chosen, key, may_wait, process_set)

        received, received_splits = call_engine(
            engine_call,
            [values, *inputs[1:]],
            _kind("alltoall", process_set),
            name,
            output_dtypes=[values.dtype, tf.int32],
            output_shapes=[tf.TensorShape([None]).concatenate(values.shape[1:]), [None]],
        )

        def gradient(upstream, _splits_gradient=None):
            returned, _ = alltoall(upstream, received_splits, process_set=process_set)
            return tf.reshape(returned, tf.shape(values))

        return (received, received_splits), gradient

    received, received_splits = exchange(tensor)
    return received if splits is None else (received, received_splits)


def broadcast(
    tensor: tf.Tensor | tf.Variable,
    root_rank: int,
    name: str | None = None,
    ignore_name_scope: bool = False,
    process_set: ProcessSet = global_process_set,
) -> tf.Tensor:
    """Returns ``root_rank``'s value of ``tensor`` on every rank. Differentiable, as in
    Horovod: the root gets the gradient averaged over ranks, the others zeros."""
    return _grouped_broadcast([tf.convert_to_tensor(tensor)], root_rank, name, process_set)[0]


def _grouped_broadcast(
    tensors: Sequence[tf.Tensor], root_rank: int, name: str | None, process_set: ProcessSet
) -> list[tf.Tensor]:
    @tf.custom_gradient
    def send(*inputs):
        def engine_call(arrays, key, may_wait, specs):
            return engine.broadcast(arrays, root_rank, key, may_wait, specs, process_set)

        outputs = call_engine(
            engine_call, inputs, _kind("broadcast", process_set), name, elementwise=True
        )

        def gradient(*upstream):
            summed = _fused_allreduce(upstream, ReduceOp.AVERAGE, 1.0, 1.0, None, process_set)
            if _group_rank(process_set) == root_rank:
                return summed
            # Zeros that still depend on the allreduce, which every rank must run.
            with tf.control_dependencies(summed):
                return [tf.zeros_like(g) for g in summed]

        return outputs, gradient

    return list(send(*tensors))


def broadcast_variables(
    variables: Iterable[tf.Variable],
    root_rank: int,
    process_set: ProcessSet = global_process_set,
    inplace: bool = False,
    name: str | None = None,
) -> tf.Operation | None:
    """Assigns ``root_rank``'s values to ``variables`` on every rank, in one communication.

    Rank-local state (gradient accumulators, variables registered as local) is skipped.
    Returns the assign op in a graph, ``None`` when run eagerly.
    """
    variables = [v for v in variables if not is_rank_local(v)]
    if not variables:
        engine.group_of(process_set, "broadcast_variables")
        return None if tf.executing_eagerly() else tf.no_op()
    values = _grouped_broadcast(
        [tf.convert_to_tensor(v) for v in variables], root_rank, name, process_set
    )
    assigns = [v.assign(value) for v, value in zip(variables, values, strict=True)]
    return None if tf.executing_eagerly() else tf.group(*assigns)


def broadcast_(
    variables: Sequence[tf.Variable] | tf.Variable,
    root_rank: int,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
) -> Any:
    """Broadcasts ``root_rank``'s values into ``variables`` in place; returns their new
    values (a list, or one value when one variable was given)."""
    single = isinstance(variables, tf.Variable)
    variables = [variables] if single else list(variables)
    values = _grouped_broadcast(
        [tf.convert_to_tensor(v) for v in variables], root_rank, name, process_set
    )
    updated = [v.assign(value) for v, value in zip(variables, values, strict=True)]
    if tf.executing_eagerly():
        updated = [v.read_value() for v in variables]
    return updated[0] if single else updated


def broadcast_global_variables(root_rank: int) -> tf.Operation:
    """A v1-graph op that broadcasts all global variables (except rank-local ones)."""
    return broadcast_variables(tf.compat.v1.global_variables(), root_rank)


def broadcast_object(
    obj: Any,
    root_rank: int = 0,
    session: Any = None,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
) -> Any:
    """Returns ``root_rank``'s picklable Python object on every rank (runs at once)."""
    return engine.broadcast_object(obj, root_rank, name or "broadcast_object", process_set)


def broadcast_object_fn(
    root_rank: int = 0,
    session: Any = None,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
):
    """A function ``fn(obj)`` that broadcasts ``obj`` from ``root_rank`` (Horovod's form)."""

    def broadcast_fn(obj: Any) -> Any:
        return broadcast_object(obj, root_rank, session, name, process_set)

    return broadcast_fn


def allgather_object(
    obj: Any,
    session: Any = None,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
) -> list[Any]:
    """Returns the list of every rank's picklable ``obj``, in rank order (runs at once)."""
    return engine.allgather_object(obj, name or "allgather_object", process_set)


def barrier(
    process_set: ProcessSet = global_process_set, name: str | None = None
) -> tf.Tensor | None:
    """Waits for every rank. Eagerly it returns at once after; in a graph it is an op."""

    def engine_call(arrays, key, may_wait, specs):
        engine.barrier(key, may_wait, process_set)
        return [np.int32(0)]

    engine.group_of(process_set, "barrier")
    done = call_engine(
        engine_call,
        [],
        _kind("barrier", process_set),
        name,
        output_dtypes=[tf.int32],
        output_shapes=[[]],
    )[0]
    return None if tf.executing_eagerly() else done


def join(device: str = "") -> int:
    """Declares that this rank has run out of data: until every rank has joined, it takes part
    in the others' allreduces with zeros. Returns the rank that joined last."""
    return engine.join()
