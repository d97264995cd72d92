"""gradsync under Horovod's ``horovod.tensorflow.keras`` names, for tf_keras (Keras 2) whatever
``tf.keras`` is: the same names as ``gradsync.tensorflow.keras``, with tf_keras callbacks."""

# ruff: noqa: F401, F403
from gradsync.tensorflow.tf_keras import callbacks, elastic
from gradsync.tensorflow.training.keras import saving
from gradsync.tensorflow.training.keras.api import *
from gradsync.tensorflow.training.keras.api import __all__ as _api
from gradsync.tensorflow.training.keras.flavors import TF_KERAS

load_model = saving.load_model_for(lambda: TF_KERAS)

__all__ = [*_api, "callbacks", "elastic", "load_model"]
