"""Collectives on ``tf.Tensor`` and ``tf.Variable``, under Horovod's names and signatures.

Each works eagerly, inside ``tf.function`` and in ``tf.compat.v1`` graphs run by a Session.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from gradsync import engine
from gradsync.engine.collectives import check_reducible, check_root_rank
from gradsync.engine.reduce_ops import ReduceOp, check_reduce_op
from gradsync.engine.world import current
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


def _check_dense_reducible(tensor: tf.Tensor, op: ReduceOp, prescale: float, postscale: float):
    check_reducible(np.dtype(tensor.dtype.as_numpy_dtype), op, prescale, postscale)


def _fused_allreduce(
    tensors: Sequence[tf.Tensor],
    op: ReduceOp,
    prescale_factor: float,
    postscale_factor: float,
    name: str | None,
) -> list[tf.Tensor]:
    """One engine call for all of ``tensors``; differentiable (the gradient is an allreduce)."""

    @tf.custom_gradient
    def reduce(*inputs):
        def engine_call(arrays, key, may_wait, specs):
            return engine.allreduce(
                arrays, op, prescale_factor, postscale_factor, key, may_wait, specs
            )

        outputs = call_engine(engine_call, inputs, "allreduce", name, elementwise=True)

        def gradient(*upstream):
            return _fused_allreduce(upstream, op, prescale_factor, postscale_factor, None)

        return outputs, gradient

    return list(reduce(*tensors))


def _sparse_allreduce(
    slices: tf.IndexedSlices,
    op: ReduceOp,
    prescale_factor: float,
    postscale_factor: float,
    name: str | None,
) -> tf.IndexedSlices:
    """Reduces IndexedSlices by gathering every rank's values and indices."""
    values = allgather(slices.values, name=None if name is None else f"{name}.values")
    indices = allgather(slices.indices, name=None if name is None else f"{name}.indices")
    scale = prescale_factor * postscale_factor
    if op is ReduceOp.AVERAGE:
        scale /= engine.size()
    if scale != 1.0:
        values = values * tf.cast(scale, values.dtype)
    return tf.IndexedSlices(values, indices, dense_shape=slices.dense_shape)


def grouped_allreduce(
    tensors: Sequence[tf.Tensor | tf.IndexedSlices | tf.Variable],
    op: ReduceOp = ReduceOp.AVERAGE,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    compression: Compressor = Compression.none,
    name: str | None = None,
) -> list[tf.Tensor | tf.IndexedSlices]:
    """Reduces every tensor of the list across ranks in one fused communication.

    ``op`` is ``Average`` or ``Sum``; ``prescale_factor`` multiplies each input before the
    reduction and ``postscale_factor`` the result. ``tf.IndexedSlices`` are gathered (values
    and indices) rather than densified. Returns the results in the order of ``tensors``.
    """
    op = check_reduce_op(op)
    compression = check_compression(compression)
    current("grouped_allreduce")
    results: list[Any] = [None] * len(tensors)
    dense_positions, compressed, contexts = [], [], []
    for position, tensor in enumerate(tensors):
        if isinstance(tensor, tf.IndexedSlices):
            results[position] = _sparse_allreduce(
                tensor, op, prescale_factor, postscale_factor, name
            )
            continue
        tensor = tf.convert_to_tensor(tensor)
        _check_dense_reducible(tensor, op, prescale_factor, postscale_factor)
        sent, context = compression.compress(tensor)
        dense_positions.append(position)
        compressed.append(sent)
        contexts.append(context)
    if compressed:
        reduced = _fused_allreduce(compressed, op, prescale_factor, postscale_factor, name)
        for position, tensor, context in zip(dense_positions, reduced, contexts, strict=True):
            results[position] = compression.decompress(tensor, context)
    return results


def allreduce(
    tensor: tf.Tensor | tf.IndexedSlices | tf.Variable,
    op: ReduceOp = ReduceOp.AVERAGE,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    compression: Compressor = Compression.none,
    name: str | None = None,
) -> tf.Tensor | tf.IndexedSlices:
    """Reduces ``tensor`` across ranks (see ``grouped_allreduce``); differentiable."""
    return grouped_allreduce([tensor], op, prescale_factor, postscale_factor, compression, name)[0]


def broadcast(
    tensor: tf.Tensor | tf.Variable, root_rank: int, name: str | None = None
) -> tf.Tensor:
    """Returns ``root_rank``'s value of ``tensor`` on every rank."""
    return _grouped_broadcast([tf.convert_to_tensor(tensor)], root_rank, name)[0]


def _grouped_broadcast(
    tensors: Sequence[tf.Tensor], root_rank: int, name: str | None
) -> list[tf.Tensor]:
    check_root_rank(root_rank, current("broadcast").size)

    def engine_call(arrays, key, may_wait, specs):
        return engine.broadcast(arrays, root_rank, key, may_wait, specs)

    return call_engine(engine_call, tensors, "broadcast", name, elementwise=True)


def broadcast_variables(
    variables: Iterable[tf.Variable], root_rank: int, name: str | None = None
) -> tf.Operation | None:
    """Assigns ``root_rank``'s values to ``variables`` on every rank, in one communication.

    Rank-local state (gradient accumulators) is skipped. Returns the assign op in a graph,
    ``None`` when run eagerly.
    """
    variables = [v for v in variables if not is_rank_local(v)]
    if not variables:
        current("broadcast_variables")
        return None if tf.executing_eagerly() else tf.no_op()
    values = _grouped_broadcast([tf.convert_to_tensor(v) for v in variables], root_rank, name)
    assigns = [v.assign(value) for v, value in zip(variables, values, strict=True)]
    return None if tf.executing_eagerly() else tf.group(*assigns)


def broadcast_global_variables(root_rank: int) -> tf.Operation:
    """A v1-graph op that broadcasts all global variables (except rank-local ones)."""
    return broadcast_variables(tf.compat.v1.global_variables(), root_rank)


def allgather(tensor: tf.Tensor | tf.Variable, name: str | None = None) -> tf.Tensor:
    """Concatenates every rank's ``tensor`` along the first dimension, in rank order."""
    tensor = tf.convert_to_tensor(tensor)
    current("allgather")

    def engine_call(arrays, key, may_wait, specs):
        return [engine.allgather(arrays[0], key, may_wait)]

    shape = tensor.shape
    out_shape = tf.TensorShape([None]).concatenate(shape[1:]) if shape.rank else [None]
    return call_engine(engine_call, [tensor], "allgather", name, output_shapes=[out_shape])[0]


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None) -> Any:
    """Returns ``root_rank``'s picklable Python object on every rank (runs at once)."""
    return engine.broadcast_object(obj, root_rank, name or "broadcast_object")


def barrier(name: str | None = None) -> tf.Tensor | None:
    """Waits for every rank. Eagerly it returns at once after; in a graph it is an op."""

    def engine_call(arrays, key, may_wait, specs):
        engine.barrier(key, may_wait)
        return [np.int32(0)]

    current("barrier")
    done = call_engine(
        engine_call, [], "barrier", name, output_dtypes=[tf.int32], output_shapes=[[]]
    )[0]
    return None if tf.executing_eagerly() else done
