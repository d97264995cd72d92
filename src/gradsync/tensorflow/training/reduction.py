"""How a list of gradients is reduced across ranks: the allreduce every training mode shares."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from gradsync.engine import size
from gradsync.engine.reduce_ops import ReduceOp, check_reduce_op
from gradsync.tensorflow.ops import Compression, grouped_allreduce
from gradsync.tensorflow.ops.compression import Compressor, check_compression

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


def make_gradient_allreducer(
    op: ReduceOp = ReduceOp.AVERAGE,
    compression: Compressor = Compression.none,
    sparse_as_dense: bool = False,
    gradient_predivide_factor: float = 1.0,
    raise_on_non_finite: bool = False,
) -> GradientAllreducer:
    """Returns ``allreduce(grads, variables, scale=1.0)``: one fused allreduce of the non-None
    gradients, multiplied by ``scale`` as they come out of the reduction (no extra pass).

    ``gradient_predivide_factor`` splits an average into a division by the factor before the
    sum and by ``size / factor`` after it (for the range of low-precision gradients).
    None gradients stay None in their positions. With ``raise_on_non_finite``, a reduced
    gradient holding an inf or NaN raises an error naming its variable, the same on every
    rank, before anything is applied.
    """
    op = check_reduce_op(op)
    compression = check_compression(compression)
    if gradient_predivide_factor != 1.0 and op is not ReduceOp.AVERAGE:
        raise ValueError("gradient_predivide_factor is only supported with op=Average.")
    if gradient_predivide_factor <= 0:
        raise ValueError(
            f"gradient_predivide_factor must be > 0, got {gradient_predivide_factor}."
        )

    def allreduce(gradients, variables, scale: float = 1.0):
        positions = [i for i, g in enumerate(gradients) if g is not None]
        present = [densify(gradients[i], sparse_as_dense) for i in positions]
        if gradient_predivide_factor == 1.0:
            reduce_op, prescale, postscale = op, 1.0, scale
        else:
            reduce_op = ReduceOp.SUM
            prescale = 1.0 / gradient_predivide_factor
            postscale = scale * gradient_predivide_factor / size()
        reduced = grouped_allreduce(
            present, reduce_op, prescale, postscale, compression, "gradients"
        )
        if raise_on_non_finite:
            reduced = [
                _check_finite(value, variables[i])
                for i, value in zip(positions, reduced, strict=True)
            ]
        results = [None] * len(gradients)
        for position, value in zip(positions, reduced, strict=True):
            results[position] = value
        return results

    return allreduce

