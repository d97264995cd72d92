"""gradsync under Horovod's ``horovod.tensorflow.keras`` names, for the Keras that ``tf.keras``
is: Keras 3, or tf_keras (Keras 2) when ``TF_USE_LEGACY_KERAS=1``. Its callbacks are that
Keras's callbacks.
"""

# ruff: noqa: F401, F403
from typing import Any

from gradsync.tensorflow.keras import callbacks
from gradsync.tensorflow.training.keras import saving
from gradsync.tensorflow.training.keras.api import *
from gradsync.tensorflow.training.keras.api import __all__ as _api
from gradsync.tensorflow.training.keras.flavors import flavor_of_tf_keras


def load_model(filepath: str, custom_optimizers=None, custom_objects=None, **options: Any):
    """Loads a Keras file with its optimizer wrapped in a ``DistributedOptimizer`` (see
    ``gradsync.tensorflow.training.keras.saving.load_model``)."""
    return saving.load_model(
        flavor_of_tf_keras(), filepath, custom_optimizers, custom_objects, **options
    )


__all__ = [*_api, "callbacks", "load_model"]
