"""Makes a synchronizing copy of a Keras-style optimizer (Keras 3 or tf_keras).

The copy is an instance of a subclass of the user's optimizer class, made on the fly with a
mixin first in its MRO, and built from the user's configuration. It keeps the user's class
(``isinstance`` checks, serialization, hyperparameters) and adds only the synchronization.
"""

from __future__ import annotations

from typing import Any

from gradsync.tensorflow.training.aggregation import GradientAggregator


def rebuild_with_mixin(
    optimizer: Any,
    mixin: type,
    aggregator: GradientAggregator,
    name: str | None,
    already_used: bool,
) -> Any:
    """A new optimizer of ``optimizer``'s class and configuration, with ``mixin`` in front.

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
    wrapped._gradsync_aggregator = aggregator
    return wrapped
