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


class SynchronizingOptimizer:
    """What every wrapped Keras optimizer offers besides its own class's API: Horovod's
    ``register_local_var``, ``_agg_helper`` and ``_compute_gradients``, and its settings."""

    _gradsync_aggregator: GradientAggregator
    _gradsync_local_variables: LocalVariables
    gradsync_settings: SyncSettings

    def register_local_var(self, var: tf.Variable) -> None:
        """Keeps ``var``'s gradient on this rank: aggregated, never reduced or broadcast."""
        self._gradsync_local_variables.add(var)
        mark_rank_local(var)

    @property
    def _agg_helper(self) -> GradientAggregator | None:
        """The aggregator when gradients are aggregated (N > 1), else None (as Horovod)."""
        return self._gradsync_aggregator if self.gradsync_settings.aggregates else None

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
