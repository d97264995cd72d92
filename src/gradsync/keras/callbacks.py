"""Keras 3 callbacks for data-parallel training (the names of
``gradsync.tensorflow.keras.callbacks``)."""

from gradsync.tensorflow.horovod_helpers import is_version_greater_equal_than  # noqa: F401
from gradsync.tensorflow.training.keras.callbacks import callback_classes
from gradsync.tensorflow.training.keras.flavors import KERAS_3

globals().update(vars(callback_classes(KERAS_3)))
__all__ = sorted(vars(callback_classes(KERAS_3)))
