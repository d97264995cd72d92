"""What gradsync's Keras callbacks do, written once for Keras 3 and tf_keras.

The classes users see live in ``gradsync.tensorflow.keras.callbacks`` (Keras 3) and
``gradsync.tensorflow.tf_keras.callbacks`` (tf_keras): each combines a mixin from here with its
Keras's ``Callback`` base class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from gradsync import engine
from gradsync.engine.collectives import check_root_rank
from gradsync.tensorflow.ops import broadcast_variables


def build_optimizer_state(optimizer: Any, variables: list) -> list:
    """Creates ``optimizer``'s slots for ``variables`` if needed; returns its variables."""
    if hasattr(optimizer, "_create_all_weights"):  # tf_keras's legacy family
        optimizer._create_all_weights(variables)
        return list(optimizer.weights)
    if not getattr(optimizer, "built", False):  # tf_keras's build is idempotent; Keras 3's not
        optimizer.build(variables)
    return list(optimizer.variables)


class BroadcastOnTrainBegin:
    """Starts every rank from ``root_rank``'s model and optimizer state.

    At the start of training it builds the optimizer (so its slots exist) and broadcasts the
    model's and the optimizer's variables. Gradient accumulators are rank-local and skipped.
    """

    model: Any

    def __init__(self, root_rank: int = 0) -> None:
        super().__init__()
        self.root_rank = check_root_rank(root_rank, engine.size())

    def on_train_begin(self, logs=None) -> None:
        variables = list(self.model.variables)
        optimizer = self.model.optimizer
        if optimizer is not None:
            variables += build_optimizer_state(optimizer, list(self.model.trainable_variables))
        assign = broadcast_variables(variables, self.root_rank)
        if assign is not None:  # a v1 graph: run in the Keras session
            self._run_in_session(assign)

    def _run_in_session(self, op: tf.Operation) -> None:
        raise NotImplementedError("only tf_keras runs Keras models in a v1 session")


class AverageMetricsOnEpochEnd:
    """Replaces each epoch's metrics in ``logs`` by their average over ranks, so that every
    rank (and callbacks after this one) sees the metrics of the whole dataset."""

    def on_epoch_end(self, epoch, logs=None) -> None:
        if not logs:
            return
        names = sorted(k for k, v in logs.items() if np.ndim(v) == 0)
        values = np.array([float(logs[k]) for k in names], dtype=np.float64)
        (averaged,) = engine.allreduce([values], engine.ReduceOp.AVERAGE, name="metrics")
        logs.update(dict(zip(names, averaged.tolist(), strict=True)))
