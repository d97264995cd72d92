"""Horovod's ``SyncBatchNormalization``: batch normalization whose training statistics are
those of the batch of every rank together.

Data-parallel training splits a global batch between the ranks. A plain
``BatchNormalization`` layer normalises each rank's share with that share's own mean and
variance, which for small per-rank batches are noisy and differ from rank to rank; this layer
normalises with the mean and variance of the global batch, as one process holding the whole
batch would. Its moving statistics therefore follow the global batch too, and stay equal on
every rank.

``sync_batch_normalization_class(flavor)`` makes the class for one Keras (Keras 3 or
tf_keras): a subclass of that Keras's ``layers.BatchNormalization`` that changes only how the
training-mode batch moments are computed; the normalisation, ``gamma``/``beta``, renorm, the
moving-average updates and inference (which uses the moving statistics, with no
communication) are that Keras's own.

How the moments are computed (``global_moments``):

* Each rank computes, per channel, its element count, the sum of its elements and the sum of
  their squares, and the three are summed over the ranks by one ``grouped_allreduce`` with
  ``op=Sum``. The global mean and (biased, as both Kerases put into ``moving_variance``)
  variance follow. Weighting by the counts makes the result exact when ranks hold batches of
  different sizes, including an empty one; Horovod's layer averages the per-rank means with
  equal weights, which is exact only for equal batches.
* ``E[x^2] - E[x]^2`` loses the variance to cancellation when the mean is large next to the
  standard deviation. To avoid that, each rank sums deviations from its own (constant)
  mean, and the sums and sums of squares are formed from those and combined in float64.
* The allreduce is differentiable, so the gradient of each rank's loss reaches every rank's
  inputs through the shared statistics: the input gradient on a rank is that of the sum of
  all ranks' losses, while the ``gamma``/``beta`` gradients are each rank's own share (they
  sum over the ranks to the single-process gradient, which is what a distributed optimizer's
  sum or average of the gradients expects).

With one process the layer is exactly ``BatchNormalization``. It needs ``init()``, as
Horovod's does, and the TensorFlow backend of Keras. Unlike Horovod's, an unnamed layer takes
Keras's usual unique name (``sync_batch_normalization``, then ``..._1``): Horovod names every
unnamed one ``sync_batch_normalization``, which a model with two of them refuses.
"""

from __future__ import annotations

import functools
from typing import Any

import tensorflow as tf

from gradsync import engine
from gradsync.engine import ReduceOp
from gradsync.tensorflow.ops.collectives import grouped_allreduce
from gradsync.tensorflow.training.keras.flavors import KERAS_3, KerasFlavor

_LOW_PRECISION = (tf.float16, tf.bfloat16)


def _synchronizes() -> bool:
    """Whether there are other ranks to synchronize with (raises before ``init()``)."""
    return engine.size() > 1


def _local_sums(
    inputs: tf.Tensor, axes: list[int], weights: tf.Tensor | None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """This rank's count, sum and sum of squares over ``axes`` (kept, as size 1), in float64.

    ``weights`` (broadcastable to ``inputs``) weigh each element, as a mask does. The sums
    are taken of deviations from a constant shift, this rank's mean, so that a large mean
    does not swamp the variance in the input's precision; the shift is added back in float64.
    """
    if weights is None:
        size = tf.reduce_prod(tf.gather(tf.shape(inputs), axes))
        count = tf.reshape(tf.cast(size, inputs.dtype), [1] * len(inputs.shape))
        weighted = inputs
    else:
        weights = tf.broadcast_to(tf.cast(weights, inputs.dtype), tf.shape(inputs))
        count = tf.reduce_sum(weights, axes, keepdims=True)
        weighted = inputs * weights
    shift = tf.stop_gradient(
        tf.math.divide_no_nan(tf.reduce_sum(weighted, axes, keepdims=True), count)
    )
    deviations = inputs - shift
    if weights is None:
        deviation_sum = tf.reduce_sum(deviations, axes, keepdims=True)
        squared_sum = tf.reduce_sum(tf.square(deviations), axes, keepdims=True)
    else:
        deviation_sum = tf.reduce_sum(deviations * weights, axes, keepdims=True)
        squared_sum = tf.reduce_sum(tf.square(deviations) * weights, axes, keepdims=True)
    count, shift, deviation_sum, squared_sum = (
        tf.cast(t, tf.float64) for t in (count, shift, deviation_sum, squared_sum)
    )
    # sum(x) = count*K + sum(x - K);  sum(x^2) = sum((x - K)^2) + 2K sum(x - K) + count*K^2
    total = count * shift + deviation_sum
    total_of_squares = squared_sum + shift * (2.0 * deviation_sum + count * shift)
    return count, total, total_of_squares


def global_moments(
    inputs: tf.Tensor, axes: list[int], keepdims: bool, weights: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """The mean and biased variance over ``axes`` of every rank's ``inputs`` together,
    weighted by ``weights`` where given; differentiable. Every rank must call it alike."""
    axes = sorted(axis % len(inputs.shape) for axis in axes)
    dtype = inputs.dtype
    if dtype in _LOW_PRECISION:
        inputs = tf.cast(inputs, tf.float32)
    count, total, total_of_squares = grouped_allreduce(
        list(_local_sums(inputs, axes, weights)), op=ReduceOp.SUM, name="sync_batch_norm"
    )
    mean = tf.math.divide_no_nan(total, count)
    variance = tf.maximum(tf.math.divide_no_nan(total_of_squares, count) - tf.square(mean), 0.0)
    if not keepdims:
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    return tf.cast(mean, dtype), tf.cast(variance, dtype)


def _check_fused(fused: Any) -> None:
    if fused is None or fused is True:
        raise ValueError(
            "SyncBatchNormalization does not support fused=True (nor fused=None, which lets "
            "Keras choose the fused kernel): its statistics are computed across ranks by the "
            "non-fused implementation. Pass fused=False, the default."
        )


@functools.cache
def sync_batch_normalization_class(flavor: KerasFlavor) -> type:
    """The ``SyncBatchNormalization`` layer class for the Keras ``flavor`` (see the module's
    docstring); the same class for every call with one flavor."""
    base = flavor.module.layers.BatchNormalization

    if flavor == KERAS_3:

        class SyncBatchNormalization(base):
            """Batch normalization whose training-mode mean and variance are those of every
            rank's batch together (Horovod's ``SyncBatchNormalization``, for Keras 3)."""

            def __init__(self, fused: bool | None = False, **kwargs: Any) -> None:
                _check_fused(fused)
                backend = flavor.module.backend.backend()
                if backend != "tensorflow":
                    raise ValueError(
                        f"SyncBatchNormalization needs Keras's TensorFlow backend, not {backend!r}."
                    )
                super().__init__(**kwargs)

            def _moments(self, inputs: tf.Tensor, mask: tf.Tensor | None) -> Any:
                if not _synchronizes():
                    return super()._moments(inputs, mask)
                weights = None if mask is None else tf.expand_dims(mask, -1)
                return global_moments(inputs, list(self._reduction_axes), False, weights)

    else:

        class SyncBatchNormalization(base):
            """Batch normalization whose training-mode mean and variance are those of every
            rank's batch together (Horovod's ``SyncBatchNormalization``, for tf_keras)."""

            def __init__(self, fused: bool | None = False, **kwargs: Any) -> None:
                _check_fused(fused)
                super().__init__(fused=False, **kwargs)

            def _calculate_mean_and_var(
                self,
                inputs: tf.Tensor,
                reduction_axes: list[int],
                keep_dims: bool,
                mask: tf.Tensor | None = None,
            ) -> Any:
                if not _synchronizes():
                    return super()._calculate_mean_and_var(
                        inputs, reduction_axes, keep_dims, mask=mask
                    )
                weights = None if mask is None else tf.expand_dims(mask, -1)
                return global_moments(inputs, list(reduction_axes), keep_dims, weights)

    SyncBatchNormalization.__module__ = __name__
    return SyncBatchNormalization
