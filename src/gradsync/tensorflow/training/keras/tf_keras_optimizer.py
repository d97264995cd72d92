"""``DistributedOptimizer`` for tf_keras (Keras 2) optimizers.

Covers both tf_keras families, ``tf_keras.optimizers.Optimizer`` and
``tf_keras.optimizers.legacy.Optimizer``, in TF2 (custom loops and ``model.fit``) and in v1
graph mode through the Keras session. Every update of theirs goes through ``apply_gradients``
(``minimize``, ``model.fit``, and the v1 session's ``get_updates`` included), which the wrapper
overrides to aggregate and allreduce before the real update.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from gradsync.tensorflow.ops.bridge import in_v1_graph
from gradsync.tensorflow.training.aggregation import advance_counters
from gradsync.tensorflow.training.keras.wrapping import SynchronizingOptimizer, rebuild_with_mixin
from gradsync.tensorflow.training.reduction import LocalVariables
from gradsync.tensorflow.training.settings import SyncSettings


class _DistributedTfKerasOptimizer(SynchronizingOptimizer):
    """Mixin placed before the user's tf_keras optimizer class in the wrapped optimizer's MRO."""

    def apply_gradients(self, grads_and_vars, *args, items=None, **kwargs):
        """Aggregates and allreduces the gradients; updates only on the call that synchronized.

        ``items``: with ``item_weighted=True``, what the summed loss whose gradients these are
        sums over (in ``fit``, gradsync's ``AggregationCallback`` gives it per batch)."""
        grads_and_vars = list(grads_and_vars)
        variables = [v for _, v in grads_and_vars]
        aggregator = self._gradsync_aggregator
        grads, items = self._items_and_gradients([g for g, _ in grads_and_vars], items)
        reduced = aggregator.compute_gradients(grads, variables, items=items)
        if in_v1_graph():
            _initialize_in_keras_session(aggregator.variables)
        apply_update = super().apply_gradients
        return aggregator.apply_or_skip(
            lambda: apply_update(list(zip(reduced, variables, strict=True)), *args, **kwargs),
            lambda: advance_counters(self),
            after=reduced,
        )

    def _apply_synchronized(self, gradients, variables):
        return super().apply_gradients(list(zip(gradients, variables, strict=True)))


def _initialize_in_keras_session(variables) -> None:
    """The v1 Keras session initializes only the variables it was told of."""
    import tf_keras

    for variable in variables:
        tf_keras.__internal__.backend.track_variable(variable)


def _tf_keras_optimizer_classes() -> tuple[type, ...]:
    if importlib.util.find_spec("tf_keras") is None:
        return ()
    import tf_keras

    return (tf_keras.optimizers.Optimizer, tf_keras.optimizers.legacy.Optimizer)


def is_tf_keras_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a tf_keras optimizer (either family)."""
    classes = _tf_keras_optimizer_classes()
    return bool(classes) and isinstance(optimizer, classes)


def _is_legacy_family(optimizer: Any) -> bool:
    import tf_keras

    return isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer)


def _already_used(optimizer: Any) -> bool:
    if _is_legacy_family(optimizer):  # its weights appear on first use
        return bool(optimizer.weights)
    return bool(getattr(optimizer, "_built", False))


def wrap_tf_keras_optimizer(
    optimizer: Any,
    settings: SyncSettings,
    name: str | None,
    local_variables: LocalVariables | None = None,
) -> Any:
    """A new tf_keras optimizer with ``optimizer``'s class and configuration that synchronizes."""
    if in_v1_graph() and not _is_legacy_family(optimizer):
        name = type(optimizer).__name__
        raise ValueError(
            f"tf_keras.optimizers.{name} does not run in v1 graph mode (eager execution is "
            f"disabled); use tf_keras.optimizers.legacy.{name}, as tf_keras itself does there."
        )
    return rebuild_with_mixin(
        optimizer,
        _DistributedTfKerasOptimizer,
        settings,
        name,
        _already_used(optimizer),
        local_variables,
    )
