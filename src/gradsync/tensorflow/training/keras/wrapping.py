"""Makes a synchronizing copy of a Keras-style optimizer (Keras 3 or tf_keras).

The copy is an instance of a subclass of the user's optimizer class, made on the fly with a
mixin first in its MRO, and built from the user's configuration. It keeps the user's class
(``isinstance`` checks, serialization, hyperparameters) and adds only the synchronization.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from gradsync.tensorflow.ops import mark_rank_local
from gradsync.tensorflow.training.aggregation import GradientAggregator
from gradsync.tensorflow.training.reduction import LocalVariables, make_gradient_allreducer
from gradsync.tensorflow.training.settings import SyncSettings


class FitBatchCount:
    """The item count of the batch ``model.fit`` is training on, set by gradsync's
    ``AggregationCallback`` before each step; read by an item-weighted optimizer, whose
    gradients in ``fit`` are those of Keras's mean loss over the batch."""

    def __init__(self, dtype: tf.DType) -> None:
        with tf.init_scope():
            self.samples = tf.Variable(0.0, dtype=dtype, trainable=False, name="fit_samples")
            self.items = tf.Variable(0.0, dtype=dtype, trainable=False, name="fit_items")

    def set(self, samples: tf.Tensor, items: tf.Tensor) -> list:
        return [
            self.samples.assign(tf.cast(samples, self.samples.dtype), read_value=False),
            self.items.assign(tf.cast(items, self.items.dtype), read_value=False),
        ]


class SynchronizingOptimizer:
    """What every wrapped Keras optimizer offers besides its own class's API: Horovod's
    ``register_local_var``, ``_agg_helper`` and ``_compute_gradients``, its settings,
    ``flush()`` and a settable ``backward_passes_per_step``."""

    _gradsync_aggregator: GradientAggregator
    _gradsync_local_variables: LocalVariables
    _gradsync_fit_batch: FitBatchCount | None = None
    gradsync_settings: SyncSettings

    @property
    def backward_passes_per_step(self) -> int:
        """N; set it between windows to change the next window's N (no retracing)."""
        return self._gradsync_aggregator.backward_passes_per_step

    @backward_passes_per_step.setter
    def backward_passes_per_step(self, value: int) -> None:
        self._gradsync_aggregator.backward_passes_per_step = value

    def flush(self) -> int:
        """Applies every rank's partial window, scaled by what it holds, and starts a fresh
        one; returns the number of updates applied. Call it on every rank, eagerly, between
        steps (gradsync's ``AggregationCallback`` does at each epoch's end in ``fit``)."""
        aggregator = self._gradsync_aggregator
        variables = aggregator.variables_in_window
        return aggregator.flush(lambda gradients: self._apply_synchronized(gradients, variables))

    def _apply_synchronized(self, gradients: list, variables: list) -> Any:
        """Applies gradients that are already reduced, with the wrapped class's own update."""
        raise NotImplementedError

    def count_fit_batches(self) -> FitBatchCount:
        """The batch count an item-weighted optimizer reads in ``fit`` (made on first use)."""
        if self._gradsync_fit_batch is None:
            self._gradsync_fit_batch = FitBatchCount(tf.float32)
        return self._gradsync_fit_batch

    def _items_and_gradients(self, gradients: list, items: Any) -> tuple[list, Any]:
        """``items`` as given; in ``fit`` (none given, item-weighted, batches counted) the
        batch's count, with Keras's mean-loss gradients turned into summed-loss ones."""
        batch = self._gradsync_fit_batch
        if items is not None or batch is None or not self.gradsync_settings.item_weighted:
            return gradients, items
        samples = batch.samples.read_value()
        scaled = [None if g is None else g * tf.cast(samples, g.dtype) for g in gradients]
        return scaled, batch.items.read_value()

    def register_local_var(self, var: tf.Variable) -> None:
        """Keeps ``var``'s gradient on this rank: aggregated, never reduced or broadcast."""
        self._gradsync_local_variables.add(var)
        mark_rank_local(var)

    @property
    def _agg_helper(self) -> GradientAggregator | None:
        """The aggregator when gradients are aggregated (N > 1), else None (as Horovod)."""
        return self._gradsync_aggregator if self._gradsync_aggregator.aggregates else None

    def _compute_gradients(self, loss, var_list, grad_loss=None, tape=None):
        """This rank's gradients of ``loss`` (a tensor, or a callable with ``tape=None``) as
        ``(gradient, variable)`` pairs. They are reduced when applied, by ``apply_gradients``.
        """
        tape = tf.GradientTape() if tape is None else tape
        if callable(loss):
            with tape:
                tape.watch(var_list)
                loss = loss()
        gradients = tape.gradient(loss, var_list, grad_loss)
        return list(zip(gradients, var_list, strict=True))


def rebuild_with_mixin(
    optimizer: Any,
    mixin: type,
    settings: SyncSettings,
    name: str | None,
    already_used: bool,
    local_variables: LocalVariables | None = None,
) -> Any:
    """A new optimizer of ``optimizer``'s class and configuration, with ``mixin`` in front,
    synchronizing as ``settings`` say.

    ``already_used`` says whether ``optimizer`` has state (slots, a moved step counter) that
    the copy would lose; such an optimizer is refused.
    """
    if already_used:
        raise ValueError(
            "DistributedOptimizer needs an optimizer that has not been used yet (its state "
            "would be lost); wrap it before the first training step."
        )
    base = type(optimizer)
    cls = type(base.__name__, (mixin, base), {})
    config = optimizer.get_config()
    if name is not None:
        config["name"] = name
    wrapped = cls.from_config(config)
    local_variables = local_variables if local_variables is not None else LocalVariables()
    wrapped._gradsync_local_variables = local_variables
    wrapped.gradsync_settings = settings
    wrapped._gradsync_aggregator = GradientAggregator(
        settings,
        make_gradient_allreducer(settings, local_variables),
        name=f"{name or 'distributed_optimizer'}_aggregation",
    )
    return wrapped
