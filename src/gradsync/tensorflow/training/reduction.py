"""How a list of gradients is reduced across ranks: the allreduce every training mode shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from gradsync import engine
from gradsync.engine import ReduceOp
from gradsync.tensorflow.ops import grouped_allreduce
from gradsync.tensorflow.training.settings import SyncSettings

#: ``allreduce(gradients, variables)``. Those made by ``make_gradient_allreducer`` also take
#: ``scale=``, a factor applied to the reduced gradients inside the reduction.
GradientAllreducer = Callable[..., list]


def densify(gradient, sparse_as_dense: bool):
    """``tf.IndexedSlices`` as a dense tensor when ``sparse_as_dense``; anything else as is."""
    if sparse_as_dense and isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def _check_finite(gradient, variable):
    if isinstance(gradient, tf.IndexedSlices) or not gradient.dtype.is_floating:
        return gradient
    name = getattr(variable, "name", None) or "(unnamed)"
    return tf.debugging.check_numerics(
        gradient,
        f"The gradient of variable {name}, reduced over ranks, is not finite; nothing was "
        "applied. Lower the learning rate, clip the gradients, or put a LossScaleOptimizer "
        "inside DistributedOptimizer to skip such steps.",
    )


class LocalVariables:
    """Variables whose gradients stay on their rank (Horovod's ``register_local_var`` and
    ``local_layers``): they are aggregated like any other, but never reduced."""

    def __init__(self) -> None:
        self._ids: dict[int, Any] = {}

    def add(self, variable: Any) -> None:
        self._ids[id(variable)] = variable  # kept alive, so the id stays its own

    def __contains__(self, variable: Any) -> bool:
        return id(variable) in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def _scaled(gradient, factor: float):
    if factor == 1.0:
        return gradient
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(factor, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


def make_gradient_allreducer(
    settings: SyncSettings, local_variables: LocalVariables | None = None
) -> GradientAllreducer:
    """Returns ``allreduce(grads, variables, scale=1.0)``: one fused allreduce of the non-None
    gradients, multiplied by ``scale`` as they come out of the reduction (no extra pass).

    ``gradient_predivide_factor`` splits an average into a division by the factor before the
    sum and by ``size / factor`` after it (for the range of low-precision gradients).
    None gradients stay None in their positions; those of ``local_variables`` are not
    reduced (only divided by the number of ranks when ``SyncSettings.scale_local_gradients``,
    as Horovod does). With
    ``raise_on_non_finite``, a reduced gradient holding an inf or NaN raises an error naming
    its variable, the same on every rank, before anything is applied.
    """
    local_variables = local_variables if local_variables is not None else LocalVariables()
    op, factor = settings.op, settings.gradient_predivide_factor

    def allreduce(gradients, variables, scale: float = 1.0):
        positions, local_positions = [], []
        for i, gradient in enumerate(gradients):
            if gradient is None:
                continue
            local = variables is not None and variables[i] in local_variables
            (local_positions if local else positions).append(i)
        present = [densify(gradients[i], settings.sparse_as_dense) for i in positions]
        size = engine.group_of(settings.process_set, "gradient allreduce").size
        if factor == 1.0:
            reduce_op, prescale, postscale = op, 1.0, scale
        else:
            reduce_op, prescale, postscale = ReduceOp.SUM, 1.0 / factor, scale * factor / size
        reduced = grouped_allreduce(
            present,
            compression=settings.compression,
            op=reduce_op,
            prescale_factor=prescale,
            postscale_factor=postscale,
            process_set=settings.process_set,
            name="gradients",
        )
        if settings.raise_on_non_finite:
            reduced = [
                _check_finite(value, variables[i])
                for i, value in zip(positions, reduced, strict=True)
            ]
        results = [None] * len(gradients)
        for position, value in zip(positions, reduced, strict=True):
            results[position] = value
        local_scale = scale / size if settings.scale_local_gradients else scale
        for position in local_positions:
            gradient = gradients[position]
            results[position] = _scaled(gradient, local_scale)
        return results

    return allreduce
