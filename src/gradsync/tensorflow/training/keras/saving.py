"""Loading Keras files with a distributed optimizer (Horovod's ``load_model``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradsync.tensorflow.training.keras.flavors import KerasFlavor
from gradsync.tensorflow.training.optimizer import distributed_optimizer
from gradsync.tensorflow.training.settings import SyncSettings

_NOT_SETTINGS = ("name", "device_dense", "device_sparse", "use_locking")


def _loader(optimizer_class: type, overrides: dict[str, Any]) -> type:
    """Stands in for ``optimizer_class`` while loading: wraps the optimizer in a
    ``DistributedOptimizer``, with the settings saved in its config when gradsync saved it,
    where ``overrides`` replace some of them."""

    class Loader:
        @staticmethod
        def from_config(config: dict[str, Any], custom_objects=None) -> Any:
            config = dict(config)
            saved = config.pop("gradsync", None)
            optimizer = optimizer_class.from_config(config)
            options = {k: v for k, v in overrides.items() if k not in _NOT_SETTINGS}
            if saved is None:
                settings = SyncSettings(**options)
            else:
                settings = SyncSettings.from_config(saved, **options)
            wrapped = distributed_optimizer(optimizer, settings, overrides.get("name"))
            if "backward_passes_per_step" in options:  # wins over the N saved in the state
                wrapped._gradsync_aggregator.keep_passes_on_restore = True
            return wrapped

    return Loader


def _load_model(
    flavor: KerasFlavor,
    filepath: str,
    custom_optimizers: list[type] | None = None,
    custom_objects: dict[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    """``load_model`` of ``flavor``'s Keras, with the model's optimizer distributed.

    A Keras 3 file saved with gradsync's optimizer brings back its settings and its
    aggregation state. Keyword arguments of ``DistributedOptimizer`` in ``overrides``
    (``compression=``, ...) replace the saved settings; the rest (``compile=``,
    ``safe_mode=``) go to Keras.
    """
    keras = flavor.module
    keras_options = {k: overrides.pop(k) for k in ("compile", "safe_mode") if k in overrides}
    if overrides.get("compression", 1) is None:
        overrides.pop("compression")
    objects = dict(custom_objects or {})
    candidates = [getattr(keras.optimizers, name) for name in dir(keras.optimizers)]
    candidates += list(custom_optimizers or []) + list(objects.values())
    bases = tuple(
        module.Optimizer
        for module in (keras.optimizers, getattr(keras.optimizers, "legacy", None))
        if module is not None and hasattr(module, "Optimizer")
    )
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, bases):
            objects[candidate.__name__] = _loader(candidate, overrides)
    return keras.models.load_model(filepath, custom_objects=objects, **keras_options)


def load_model_for(flavor: Callable[[], KerasFlavor]) -> Callable[..., Any]:
    """Horovod's ``load_model(filepath, custom_optimizers, custom_objects, compression,
    legacy_opts)`` for the Keras that ``flavor()`` names when it is called."""

    def load_model(
        filepath: str,
        custom_optimizers: list[type] | None = None,
        custom_objects: dict[str, Any] | None = None,
        compression: Any = None,
        legacy_opts: bool = False,
        **options: Any,
    ) -> Any:
        """Loads a Keras file with its optimizer wrapped in a ``DistributedOptimizer``: the
        settings and aggregation state saved with it (Keras 3), where ``compression`` and
        other ``DistributedOptimizer`` keyword arguments replace saved settings.
        ``legacy_opts`` is accepted for compatibility (both optimizer families load)."""
        return _load_model(
            flavor(),
            filepath,
            custom_optimizers,
            custom_objects,
            compression=compression,
            **options,
        )

    return load_model
