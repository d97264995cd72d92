"""gradsync under Horovod's ``horovod.tensorflow.keras`` names, for tf_keras (Keras 2) whatever
``tf.keras`` is: the same names as ``gradsync.tensorflow.keras``, with tf_keras callbacks."""

# ruff: noqa: F401, F403
from typing import Any

from gradsync.tensorflow.tf_keras import callbacks
from gradsync.tensorflow.training.keras import saving
from gradsync.tensorflow.training.keras.api import *
from gradsync.tensorflow.training.keras.api import __all__ as _api
from gradsync.tensorflow.training.keras.flavors import TF_KERAS


def load_model(filepath: str, custom_optimizers=None, custom_objects=None, **options: Any):
    """Loads a tf_keras file with its optimizer wrapped in a ``DistributedOptimizer``."""
    return saving.load_model(TF_KERAS, filepath, custom_optimizers, custom_objects, **options)


__all__ = [*_api, "callbacks", "load_model"]
