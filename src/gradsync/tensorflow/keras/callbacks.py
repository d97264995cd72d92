"""Callbacks for data-parallel training, for the Keras that ``tf.keras`` is:
``BroadcastGlobalVariablesCallback``, ``MetricAverageCallback``,
``LearningRateScheduleCallback``, ``LearningRateWarmupCallback``, ``BestModelCheckpoint``."""

from gradsync.tensorflow.training.keras.callbacks import callback_classes
from gradsync.tensorflow.training.keras.flavors import flavor_of_tf_keras

globals().update(vars(callback_classes(flavor_of_tf_keras())))
__all__ = sorted(vars(callback_classes(flavor_of_tf_keras())))
