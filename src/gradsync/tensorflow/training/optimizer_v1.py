"""``DistributedOptimizer`` for ``tf.compat.v1.train`` optimizers, in v1 graph mode."""

from __future__ import annotations

import tensorflow as tf

from gradsync.tensorflow.training.aggregation import GradientAggregator, advance_counters
from gradsync.tensorflow.training.reduction import make_gradient_allreducer
from gradsync.tensorflow.training.settings import SyncSettings


class DistributedLegacyOptimizer(tf.compat.v1.train.Optimizer):
    """Wraps a ``tf.compat.v1.train.Optimizer``: gradients are aggregated and allreduced in
    ``compute_gradients``; ``apply_gradients`` updates only on the call that synchronized.

    ``minimize`` is ``compute_gradients`` then ``apply_gradients``. With
    ``item_weighted=True`` both ``minimize`` and ``compute_gradients`` take ``items=``, the
    item count of the summed loss. ``flush(session)`` applies a partial window and
    ``set_backward_passes_per_step(n, session)`` changes N between windows.
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
        self._flush_step: tuple[tf.Operation, tf.Tensor, tf.Tensor] | None = None

    def compute_gradients(self, *args, items=None, **kwargs):
        """The wrapped optimizer's gradients, aggregated and allreduced (``items``: see the
        class)."""
        grads_and_vars = self._optimizer.compute_gradients(*args, **kwargs)
        gradients = [g for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]
        reduced = self._aggregator.compute_gradients(gradients, variables, items=items)
        return list(zip(reduced, variables, strict=True))

    def minimize(self, loss, global_step=None, var_list=None, name=None, items=None, **kwargs):
        """``compute_gradients`` then ``apply_gradients``; ``kwargs`` go to the former."""
        grads_and_vars = self.compute_gradients(loss, var_list=var_list, items=items, **kwargs)
        return self.apply_gradients(grads_and_vars, global_step=global_step, name=name)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        """Applies on synchronizing calls; otherwise advances ``global_step`` (see count_steps).

        With windows weighed by their content, also builds the step that ``flush`` runs."""
        grads_and_vars = list(grads_and_vars)
        result = self._aggregator.apply_or_skip(
            lambda: self._optimizer.apply_gradients(grads_and_vars, global_step, name),
            lambda: advance_counters(global_step=global_step),
            after=[g for g, _ in grads_and_vars],
        )
        if self._aggregator.can_flush and self._flush_step is None:
            self._flush_step = self._build_flush_step(global_step)
        return result if isinstance(result, tf.Operation) else tf.group(result)

    def _build_flush_step(self, global_step):
        variables = self._aggregator.variables_in_window
        gradients, has_update, all_flushing = self._aggregator.flush_round()

        def apply():
            pairs = list(zip(gradients, variables, strict=True))
            with tf.control_dependencies([self._optimizer.apply_gradients(pairs, global_step)]):
                return tf.constant(True)

        applied = tf.cond(has_update, apply, lambda: tf.constant(False))
        return applied, has_update, all_flushing

    def flush(self, session=None) -> int:
        """Applies every rank's partial window, scaled by what it holds, and starts a fresh
        one; returns the number of updates applied. Call it on every rank between steps,
        with the training ``session`` (the default session when None)."""
        if self._flush_step is None:
            if not self._aggregator.aggregates:
                return 0
            raise RuntimeError(
                "flush needs the training op built first (minimize or apply_gradients) and "
                "op=Average."
            )
        session = session or tf.compat.v1.get_default_session()
        applied = 0
        while True:
            _, has_update, all_flushing = session.run(self._flush_step)
            applied += int(has_update)
            if all_flushing:
                return applied

    def set_backward_passes_per_step(self, value: int, session=None) -> None:
        """Sets N for the next window, through ``session`` (the default session when None)."""
        self._aggregator.set_backward_passes_per_step(value, session)

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self, *args, **kwargs):
        return self._optimizer.variables(*args, **kwargs)
