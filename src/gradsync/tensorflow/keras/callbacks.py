"""Keras 3 callbacks for data-parallel training."""

from __future__ import annotations

import keras

from gradsync.tensorflow.training.callbacks import AverageMetricsOnEpochEnd, BroadcastOnTrainBegin


class BroadcastGlobalVariablesCallback(BroadcastOnTrainBegin, keras.callbacks.Callback):
    __doc__ = BroadcastOnTrainBegin.__doc__


class MetricAverageCallback(AverageMetricsOnEpochEnd, keras.callbacks.Callback):
    __doc__ = AverageMetricsOnEpochEnd.__doc__
