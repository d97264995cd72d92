"""How a list of gradients is reduced across ranks: the allreduce every training mode shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from gradsync import engine
from gradsync.engine import ReduceOp
from gradsync.tensorflow.ops import grouped_allreduce
from gradsync.tensorflow.training.settings import SyncSettings

#: ``allreduce(gradients, variables) -> list``: Horovod's form of a gradient reduction, which a
#: user may also write. Those made by ``make_gradient_allreducer`` are ``GradientAllreduce``.
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


def _scaled(gradient, factor: float | tf.Tensor):
    if isinstance(factor, float) and factor == 1.0:
        return gradient
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(factor, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


class GradientAllreduce:
    """The reduction every training mode shares: one fused allreduce of the non-None
    gradients, as ``settings`` say.

    Called as ``allreduce(gradients, variables)`` it averages (or sums) them over ranks, as
    Horovod's ``allreduce_func``. ``reduce_window`` reduces an aggregation window instead:
    summed gradients and their weight travel together, and the result is divided by the total
    weight (see ``GradientAggregator``).

    ``gradient_predivide_factor`` splits an average into a division by the factor before the
    sum and by ``size / factor`` after it (for the range of low-precision gradients).
    None gradients stay None in their positions; those of ``local_variables`` are not
    reduced (only divided by the number of ranks when ``SyncSettings.scale_local_gradients``,
    as Horovod does). With ``raise_on_non_finite``, a reduced gradient holding an inf or NaN
    raises an error naming its variable, the same on every rank, before anything is applied.
    """

    def __init__(self, settings: SyncSettings, local_variables: LocalVariables | None = None):
        self.settings = settings
        self.local_variables = local_variables if local_variables is not None else LocalVariables()

    def _split(self, gradients, variables) -> tuple[list[int], list[int]]:
        positions, local_positions = [], []
        for i, gradient in enumerate(gradients):
            if gradient is None:
                continue
            local = variables is not None and variables[i] in self.local_variables
            (local_positions if local else positions).append(i)
        return positions, local_positions

    def _group_size(self) -> int:
        return engine.group_of(self.settings.process_set, "gradient allreduce").size

    def _checked(self, reduced, variables, positions):
        if not self.settings.raise_on_non_finite:
            return reduced
        pairs = zip(positions, reduced, strict=True)
        return [_check_finite(value, variables[i]) for i, value in pairs]

    def _results(self, gradients, variables, positions, reduced, local_positions, local_scale):
        """The reduced gradients back in their positions, with the local ones scaled."""
        results = [None] * len(gradients)
        checked = self._checked(reduced, variables, positions)
        for position, value in zip(positions, checked, strict=True):
            results[position] = value
        for position in local_positions:
            results[position] = _scaled(gradients[position], local_scale)
        return results

    def __call__(self, gradients, variables) -> list:
        settings = self.settings
        positions, local_positions = self._split(gradients, variables)
        present = [densify(gradients[i], settings.sparse_as_dense) for i in positions]
        size = self._group_size()
        factor = settings.gradient_predivide_factor
        if factor == 1.0:
            reduce_op, prescale, postscale = settings.op, 1.0, 1.0
        else:
            reduce_op, prescale, postscale = ReduceOp.SUM, 1.0 / factor, factor / size
        buckets = gradient_buckets(present, settings.bucket_bytes)
        reduced: list = [None] * len(present)
        issued: list = []
        for index, bucket in enumerate(buckets):
            # Each bucket waits for the one before: every rank issues them in this order, and
            # in a graph each goes as soon as its gradients exist, while the backward pass of
            # the earlier layers runs on.
            with tf.control_dependencies(issued):
                values = grouped_allreduce(
                    [present[i] for i in bucket],
                    compression=settings.compression,
                    op=reduce_op,
                    prescale_factor=prescale,
                    postscale_factor=postscale,
                    process_set=settings.process_set,
                    name="gradients" if len(buckets) == 1 else f"gradients.bucket{index}",
                )
            for i, value in zip(bucket, values, strict=True):
                reduced[i] = value
            issued = [v for v in values if not isinstance(v, tf.IndexedSlices)]
        local_scale = 1.0 / size if settings.scale_local_gradients else 1.0
        return self._results(gradients, variables, positions, reduced, local_positions, local_scale)

    def reduce_window(
        self, window, variables, weight: tf.Tensor, multiplier: tf.Tensor, flushing: bool
    ) -> tuple[list, tf.Tensor, tf.Tensor]:
        """Reduces one aggregation window: ``window`` holds this rank's summed gradients and
        ``weight`` what they are a sum over (micro-steps, or items).

        Returns ``(gradients, total weight, ranks flushing)``: the gradients are the sum over
        ranks divided by the total weight, times ``multiplier``; the weight and the flushing
        flag travel in the same fused allreduce as the gradients (the gradients are compressed,
        these two scalars never are).
        """
        settings = self.settings
        positions, local_positions = self._split(window, variables)
        present = [window[i] for i in positions]
        compressed, contexts = [], []
        for gradient in present:
            sent, context = settings.compression.compress(gradient)
            compressed.append(sent)
            contexts.append(context)
        stats = tf.stack([weight, tf.cast(1.0 if flushing else 0.0, weight.dtype)])
        factor = settings.gradient_predivide_factor
        *reduced, stats = grouped_allreduce(
            [*compressed, stats],
            op=ReduceOp.SUM,
            prescale_factor=1.0 / factor,
            postscale_factor=factor,
            process_set=settings.process_set,
            name="gradients",
        )
        total, flushing_ranks = stats[0], stats[1]
        scale = tf.math.divide_no_nan(tf.cast(multiplier, total.dtype), total)
        reduced = [
            _scaled(settings.compression.decompress(value, context), scale)
            for value, context in zip(reduced, contexts, strict=True)
        ]
        local_scale = scale if settings.scale_local_gradients else scale * self._group_size()
        results = self._results(window, variables, positions, reduced, local_positions, local_scale)
        return results, total, flushing_ranks


def gradient_buckets(gradients: list, bucket_bytes: int | None) -> list[list[int]]:
    """Positions of ``gradients`` in buckets of about ``bucket_bytes``, the last gradients
    (the last layers', which the backward pass computes first) in the first bucket; one
    bucket when ``bucket_bytes`` is None. A gradient larger than a bucket has its own."""
    if bucket_bytes is None or len(gradients) < 2:
        return [list(range(len(gradients)))]
    buckets: list[list[int]] = []
    filled = bucket_bytes
    for position in reversed(range(len(gradients))):
        nbytes = _static_bytes(gradients[position])
        if filled + nbytes > bucket_bytes and (not buckets or buckets[-1]):
            buckets.append([])
            filled = 0
        buckets[-1].append(position)
        filled += nbytes
    return [sorted(bucket) for bucket in buckets]


def _static_bytes(gradient) -> int:
    values = gradient.values if isinstance(gradient, tf.IndexedSlices) else gradient
    count = values.shape.num_elements() if values.shape.is_fully_defined() else 0
    return count * values.dtype.size


def make_gradient_allreducer(
    settings: SyncSettings, local_variables: LocalVariables | None = None
) -> GradientAllreduce:
    """The reduction of gradients that ``settings`` describe (see ``GradientAllreduce``)."""
    return GradientAllreduce(settings, local_variables)
