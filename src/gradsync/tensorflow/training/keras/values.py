"""Horovod's Keras collectives: on values (numbers, arrays, tensors), returning numpy values
at once, as ``horovod.tensorflow.keras.allreduce`` and friends do."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from gradsync.engine import ReduceOp
from gradsync.tensorflow import ops
from gradsync.tensorflow.ops import Compression, Compressor


def _evaluate(tensor: tf.Tensor) -> np.ndarray:
    if tf.executing_eagerly():
        return tensor.numpy()
    import tf_keras  # only tf_keras runs models in a v1 session

    return tf_keras.backend.get_value(tensor)


def allreduce(
    value: Any,
    name: str | None = None,
    average: bool | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    op: ReduceOp | None = None,
    compression: Compressor = Compression.none,
) -> np.ndarray:
    """``value`` reduced over ranks (Average by default), as a numpy value."""
    reduced = ops.allreduce(
        tf.convert_to_tensor(value),
        average,
        compression=compression,
        op=op,
        prescale_factor=prescale_factor,
        postscale_factor=postscale_factor,
        name=name,
    )
    return _evaluate(reduced)


def allgather(value: Any, name: str | None = None) -> np.ndarray:
    """Every rank's ``value`` concatenated along the first dimension, as a numpy value."""
    return _evaluate(ops.allgather(tf.convert_to_tensor(value), name=name))


def broadcast(value: Any, root_rank: int, name: str | None = None) -> np.ndarray:
    """``root_rank``'s ``value`` on every rank, as a numpy value."""
    return _evaluate(ops.broadcast(tf.convert_to_tensor(value), root_rank, name=name))


def reducescatter(
    value: Any, name: str | None = None, op: ReduceOp = ReduceOp.AVERAGE
) -> np.ndarray:
    """This rank's block of ``value`` reduced over ranks, as a numpy value."""
    return _evaluate(ops.reducescatter(tf.convert_to_tensor(value), op=op, name=name))


def broadcast_global_variables(root_rank: int) -> None:
    """Broadcasts every variable of the Keras session from ``root_rank`` (tf_keras in a v1
    graph); eagerly there are no global variables: broadcast the model's with
    ``broadcast_variables`` or the ``BroadcastGlobalVariablesCallback``."""
    if tf.executing_eagerly():
        raise RuntimeError(
            "broadcast_global_variables needs a v1 graph (tf_keras with eager execution "
            "disabled); eagerly, use broadcast_variables(model.variables, root_rank) or "
            "callbacks.BroadcastGlobalVariablesCallback."
        )
    _evaluate(ops.broadcast_global_variables(root_rank))
