"""tf_keras (Keras 2) callbacks for data-parallel training, in TF2 and in the v1 session
(the names of ``gradsync.tensorflow.keras.callbacks``)."""

from gradsync.tensorflow.horovod_helpers import is_version_greater_equal_than  # noqa: F401
from gradsync.tensorflow.training.keras.callbacks import callback_classes
from gradsync.tensorflow.training.keras.flavors import TF_KERAS

globals().update(vars(callback_classes(TF_KERAS)))
__all__ = sorted(vars(callback_classes(TF_KERAS)))
