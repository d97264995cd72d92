"""gradsync under Horovod's ``horovod.keras`` names, for standalone Keras (Keras 3): change
``import horovod.keras as hvd`` to ``import gradsync.keras as hvd``."""

# ruff: noqa: F401, F403
from gradsync.keras import callbacks, elastic
from gradsync.tensorflow.training.keras import saving
from gradsync.tensorflow.training.keras.api import *
from gradsync.tensorflow.training.keras.api import __all__ as _api
from gradsync.tensorflow.training.keras.flavors import KERAS_3

load_model = saving.load_model_for(lambda: KERAS_3)

__all__ = [*_api, "callbacks", "elastic", "load_model"]
