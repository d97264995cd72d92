"""gradsync under Horovod's ``horovod.keras`` names, for standalone Keras (Keras 3): change
``import horovod.keras as hvd`` to ``import gradsync.keras as hvd``."""

# ruff: noqa: F401, F403
from typing import Any

from gradsync.keras import callbacks
from gradsync.tensorflow.training.keras import saving
from gradsync.tensorflow.training.keras.api import *
from gradsync.tensorflow.training.keras.api import __all__ as _api
from gradsync.tensorflow.training.keras.flavors import KERAS_3


def load_model(filepath: str, custom_optimizers=None, custom_objects=None, **options: Any):
    """Loads a Keras file with its optimizer wrapped in a ``DistributedOptimizer``."""
    return saving.load_model(KERAS_3, filepath, custom_optimizers, custom_objects, **options)


__all__ = [*_api, "callbacks", "load_model"]
