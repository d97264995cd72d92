"""Keras callbacks for data-parallel training."""

from __future__ import annotations

import keras
import numpy as np

from gradsync import engine
from gradsync.tensorflow.ops import broadcast_variables


class BroadcastGlobalVariablesCallback(keras.callbacks.Callback):
    """Starts every rank from ``root_rank``'s model and optimizer state.

    At the start of training it builds the optimizer (so its slots exist) and broadcasts the
    model's and the optimizer's variables. Gradient accumulators are rank-local and skipped.
    """

    def __init__(self, root_rank: int = 0) -> None:
        super().__init__()
        self.root_rank = root_rank

    def on_train_begin(self, logs=None) -> None:
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        variables = list(self.model.variables)
        if optimizer is not None:
            variables += list(optimizer.variables)
        broadcast_variables(variables, self.root_rank)


class MetricAverageCallback(keras.callbacks.Callback):
    """Replaces each epoch's metrics in ``logs`` by their average over ranks, so that every
    rank (and callbacks after this one) sees the metrics of the whole dataset."""

    def _average(self, logs) -> None:
        if not logs:
            return
        names = sorted(k for k, v in logs.items() if np.ndim(v) == 0)
        values = np.array([float(logs[k]) for k in names], dtype=np.float64)
        (averaged,) = engine.allreduce([values], engine.ReduceOp.AVERAGE, name="metrics")
        logs.update(dict(zip(names, averaged.tolist(), strict=True)))

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._average(logs)
