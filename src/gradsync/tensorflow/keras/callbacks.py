"""Callbacks for data-parallel training, for the Keras that ``tf.keras`` is:
``BroadcastGlobalVariablesCallback``, ``MetricAverageCallback``,
``LearningRateScheduleCallback``, ``LearningRateWarmupCallback``, ``BestModelCheckpoint``,
``AggregationCallback``."""

from gradsync.tensorflow.horovod_helpers import is_version_greater_equal_than  # noqa: F401
from gradsync.tensorflow.training.keras.callbacks import callback_classes
from gradsync.tensorflow.training.keras.flavors import flavor_of_tf_keras

globals().update(vars(callback_classes(flavor_of_tf_keras())))
__all__ = sorted(vars(callback_classes(flavor_of_tf_keras())))
