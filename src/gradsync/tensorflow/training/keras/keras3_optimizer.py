"""``DistributedOptimizer`` for Keras 3 optimizers, in custom loops and in ``model.fit``.

The wrapped optimizer is an instance of a subclass of the user's optimizer class, made on the
fly, whose ``apply`` aggregates and allreduces before the real update. ``apply`` is the single
entry point of Keras 3 optimizers (``apply_gradients`` and ``model.fit`` both go through it), so
unlike Horovod, calling ``apply_gradients(zip(grads, vars))`` directly also synchronizes.
"""

from __future__ import annotations

from typing import Any

from gradsync.tensorflow.training.aggregation import advance_counters
from gradsync.tensorflow.training.keras.wrapping import SynchronizingOptimizer, rebuild_with_mixin
from gradsync.tensorflow.training.reduction import LocalVariables
from gradsync.tensorflow.training.settings import SyncSettings


class _DistributedKerasOptimizer(SynchronizingOptimizer):
    """Mixin placed before the user's optimizer class in the wrapped optimizer's MRO.

    Besides synchronizing, it saves gradsync's settings in the optimizer's config and the
    aggregation state after the optimizer's own variables in a Keras file, so that
    ``gradsync.tensorflow.keras.load_model`` brings both back.
    """

    def get_config(self) -> dict[str, Any]:
        settings = self.gradsync_settings.to_config()
        settings["backward_passes_per_step"] = self._gradsync_aggregator.backward_passes_per_step
        return {**super().get_config(), "gradsync": settings}

    def save_own_variables(self, store) -> None:
        super().save_own_variables(store)
        first = len(self.variables)
        for i, variable in enumerate(self._gradsync_aggregator.state(), start=first):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store) -> None:
        own, saved = len(self.variables), len(store.keys())
        if own == 0 or saved <= own:  # not built yet, or saved without aggregation state
            super().load_own_variables(store)
            return
        super().load_own_variables({str(i): store[str(i)] for i in range(own)})
        self._gradsync_aggregator.restore_state([store[str(i)] for i in range(own, saved)])

    def __setattr__(self, name: str, value: Any) -> None:
        # A LossScaleOptimizer clears loss_scale_factor on the optimizer it wraps: refuse to be
        # wrapped, since a rank skipping a non-finite micro-step alone would leave the others.
        if name == "loss_scale_factor" and "_gradsync_aggregator" in self.__dict__:
            raise ValueError(
                "a LossScaleOptimizer cannot wrap a DistributedOptimizer: a rank that skipped "
                "a non-finite micro-step on its own would fall out of step with the others. "
                "Wrap it the other way round: DistributedOptimizer(LossScaleOptimizer(opt)); "
                "model.compile keeps that as it is under mixed precision."
            )
        super().__setattr__(name, value)

    def apply_gradients(self, grads_and_vars, items=None):
        """``apply`` on ``(gradient, variable)`` pairs; ``items`` as in ``apply``."""
        grads, trainable_variables = zip(*grads_and_vars, strict=True)
        self.apply(list(grads), list(trainable_variables), items=items)
        return self._iterations

    def apply(self, grads, trainable_variables=None, items=None):
        """Aggregates and allreduces ``grads``; updates only on the call that synchronized.

        ``items``: with ``item_weighted=True``, what the summed loss whose gradients these are
        sums over (in ``fit``, gradsync's ``AggregationCallback`` gives it per batch)."""
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        aggregator = self._gradsync_aggregator
        grads, items = self._items_and_gradients(list(grads), items)
        reduced = aggregator.compute_gradients(grads, trainable_variables, items=items)
        apply_update = super().apply
        return aggregator.apply_or_skip(
            lambda: apply_update(reduced, trainable_variables),
            lambda: advance_counters(self),
            after=reduced,
        )

    def _apply_synchronized(self, gradients, variables):
        return super().apply(gradients, variables)


def wrap_keras_optimizer(
    optimizer: Any,
    settings: SyncSettings,
    name: str | None,
    local_variables: LocalVariables | None = None,
) -> Any:
    """A new optimizer with ``optimizer``'s class and configuration that synchronizes."""
    accumulation_steps = getattr(optimizer, "gradient_accumulation_steps", None)
    if accumulation_steps:
        raise ValueError(
            f"the optimizer has Keras's gradient_accumulation_steps={accumulation_steps}; "
            "gradsync would aggregate a second time. Create the optimizer without it and pass "
            f"backward_passes_per_step={accumulation_steps} to DistributedOptimizer instead."
        )
    already_used = bool(optimizer.built and optimizer.variables)
    return rebuild_with_mixin(
        optimizer, _DistributedKerasOptimizer, settings, name, already_used, local_variables
    )


def is_keras_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a Keras 3 optimizer."""
    try:
        import keras
    except ImportError:
        return False
    return isinstance(optimizer, keras.optimizers.Optimizer)
