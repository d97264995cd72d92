"""Which Keras a program uses: Keras 3 (``keras``) or Keras 2 (``tf_keras``).

``tf.keras`` is Keras 3 on TensorFlow >= 2.16, or tf_keras when ``TF_USE_LEGACY_KERAS=1``;
Horovod's Keras modules serve whichever it is, and so do gradsync's.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType


@dataclasses.dataclass(frozen=True)
class KerasFlavor:
    """One Keras, by the name of its package."""

    package: str

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(self.package)

    @property
    def runs_v1_sessions(self) -> bool:
        """Whether models may run in a v1 graph session (tf_keras with eager disabled)."""
        return self.package == "tf_keras"


KERAS_3 = KerasFlavor("keras")
TF_KERAS = KerasFlavor("tf_keras")


def flavor_of_tf_keras() -> KerasFlavor:
    """The Keras that ``tf.keras`` is in this process."""
    import tensorflow as tf

    package = tf.keras.callbacks.Callback.__module__.split(".")[0]
    return TF_KERAS if package == "tf_keras" else KERAS_3
