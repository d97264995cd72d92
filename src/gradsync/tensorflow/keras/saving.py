"""Loading Keras files whose model was compiled with a ``DistributedOptimizer``."""

from __future__ import annotations

from typing import Any

import keras

from gradsync.tensorflow.training.optimizer import distributed_optimizer_from_settings


def _loader(optimizer_class: type, overrides: dict[str, Any]) -> type:
    """Stands in for ``optimizer_class`` while loading: wraps it again when its config holds
    gradsync's settings (an optimizer saved without gradsync comes back as it was)."""

    class Loader:
        @staticmethod
        def from_config(config: dict[str, Any], custom_objects=None) -> Any:
            config = dict(config)
            settings = config.pop("gradsync", None)
            optimizer = optimizer_class.from_config(config)
            if settings is None:
                return optimizer
            return distributed_optimizer_from_settings(optimizer, settings, overrides)

    return Loader


def load_model(
    filepath: str,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,  # noqa: A002 - Keras's name
    safe_mode: bool = True,
    **overrides: Any,
) -> keras.Model:
    """``keras.models.load_model`` for a model saved with a ``DistributedOptimizer``.

    The optimizer comes back distributed, with the settings it was saved with (keyword
    arguments of ``DistributedOptimizer`` in ``overrides`` replace them, e.g.
    ``compression=``) and with its aggregation state. Optimizer classes of your own go in
    ``custom_objects``, as for Keras.
    """
    objects = dict(custom_objects or {})
    candidates = [getattr(keras.optimizers, name) for name in dir(keras.optimizers)]
    candidates += list(objects.values())
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, keras.optimizers.Optimizer):
            objects[candidate.__name__] = _loader(candidate, overrides)
    return keras.models.load_model(
        filepath, custom_objects=objects, compile=compile, safe_mode=safe_mode
    )
