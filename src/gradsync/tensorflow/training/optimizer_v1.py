"""``DistributedOptimizer`` for ``tf.compat.v1.train`` optimizers, in v1 graph mode."""

from __future__ import annotations

import tensorflow as tf

from gradsync.tensorflow.training.aggregation import GradientAggregator, advance_counters
from gradsync.tensorflow.training.reduction import make_gradient_allreducer
from gradsync.tensorflow.training.settings import SyncSettings


class DistributedLegacyOptimizer(tf.compat.v1.train.Optimizer):
    """Wraps a ``tf.compat.v1.train.Optimizer``: gradients are aggregated and allreduced in
    ``compute_gradients``; ``apply_gradients`` updates only on the call that synchronized.

    ``minimize`` is the base class's: ``compute_gradients`` then ``apply_gradients``.
    """

    def __init__(
        self,
        optimizer: tf.compat.v1.train.Optimizer,
        settings: SyncSettings,
        name: str | None = None,
        use_locking: bool = False,
    ) -> None:
        super().__init__(use_locking=use_locking, name=name or f"Distributed{optimizer.get_name()}")
        self._optimizer = optimizer
        self.gradsync_settings = settings
        self._aggregator = GradientAggregator(
            settings,
            make_gradient_allreducer(settings),
            name=f"{name or 'distributed_optimizer'}_aggregation",
        )

    def compute_gradients(self, *args, **kwargs):
        """The wrapped optimizer's gradients, aggregated and allreduced."""
        grads_and_vars = self._optimizer.compute_gradients(*args, **kwargs)
        gradients = [g for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]
        reduced = self._aggregator.compute_gradients(gradients, variables)
        return list(zip(reduced, variables, strict=True))

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        """Applies on synchronizing calls; otherwise advances ``global_step`` (see count_steps)."""
        grads_and_vars = list(grads_and_vars)
        result = self._aggregator.apply_or_skip(
            lambda: self._optimizer.apply_gradients(grads_and_vars, global_step, name),
            lambda: advance_counters(global_step=global_step),
            after=[g for g, _ in grads_and_vars],
        )
        return result if isinstance(result, tf.Operation) else tf.group(result)

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self, *args, **kwargs):
        return self._optimizer.variables(*args, **kwargs)
