"""tf_keras (Keras 2) callbacks for data-parallel training, in TF2 and in the v1 session."""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from gradsync.tensorflow.training.callbacks import AverageMetricsOnEpochEnd, BroadcastOnTrainBegin


class BroadcastGlobalVariablesCallback(BroadcastOnTrainBegin, tf_keras.callbacks.Callback):
    __doc__ = BroadcastOnTrainBegin.__doc__

    def _run_in_session(self, op: tf.Operation) -> None:
        tf_keras.backend.batch_get_value([op])


class MetricAverageCallback(AverageMetricsOnEpochEnd, tf_keras.callbacks.Callback):
    __doc__ = AverageMetricsOnEpochEnd.__doc__
