"""gradsync under Horovod's ``horovod.tensorflow.keras`` names, for the Keras that ``tf.keras``
is: Keras 3, or tf_keras (Keras 2) when ``TF_USE_LEGACY_KERAS=1``. Its callbacks are that
Keras's callbacks.
"""

# ruff: noqa: F401, F403
from gradsync.tensorflow.keras import callbacks, elastic
from gradsync.tensorflow.training.keras import saving
from gradsync.tensorflow.training.keras.api import *
from gradsync.tensorflow.training.keras.api import __all__ as _api
from gradsync.tensorflow.training.keras.flavors import flavor_of_tf_keras

load_model = saving.load_model_for(flavor_of_tf_keras)

__all__ = [*_api, "callbacks", "elastic", "load_model"]
