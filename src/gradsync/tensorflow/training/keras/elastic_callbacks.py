"""Horovod's elastic Keras callbacks, written once for Keras 3 and tf_keras.

For a commit to record the batch it was taken after, list ``CommitStateCallback`` after the
two others (Horovod's documentation lists it first, which commits the count of the batch
before, so that one batch is trained again after a relaunch).
"""

from __future__ import annotations

import functools
import types
from typing import Any

from gradsync.tensorflow.training.keras.flavors import KerasFlavor


class CommitEveryBatches:
    """Commits ``state`` every ``batches_per_commit`` batches and at each epoch's end."""

    def __init__(self, state: Any, batches_per_commit: int = 1) -> None:
        super().__init__()
        if batches_per_commit < 1:
            raise ValueError(f"batches_per_commit must be >= 1, got {batches_per_commit}.")
        self.state = state
        self.batches_per_commit = batches_per_commit
        self.batches_remaining = batches_per_commit

    def on_train_begin(self, logs=None) -> None:
        self.batches_remaining = self.batches_per_commit

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.batches_remaining -= 1
        if self.batches_remaining == 0:
            self.state.commit()
            self.batches_remaining = self.batches_per_commit

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.state.commit()


class TrackBatch:
    """Keeps ``state.batch`` at the number of batches of the current epoch trained so far
    (counting those before a relaunch), and 0 at each epoch's end."""

    def __init__(self, state: Any) -> None:
        super().__init__()
        self.state = state
        self.first_batch = 0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.first_batch = self.state.batch

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.state.batch = self.first_batch + batch + 1

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.state.batch = 0
        self.first_batch = 0


class TrackEpoch:
    """Keeps ``state.epoch`` at the number of epochs finished, across relaunches (Keras counts
    from 0 in every ``fit``)."""

    def __init__(self, state: Any) -> None:
        super().__init__()
        self.state = state
        self.initial_epoch = state.epoch

    def on_train_begin(self, logs=None) -> None:
        self.initial_epoch = self.state.epoch

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.state.epoch = self.initial_epoch + epoch + 1


@functools.cache
def elastic_api(flavor: KerasFlavor) -> types.SimpleNamespace:
    """Horovod's Keras ``elastic`` module for one Keras: the TensorFlow elastic API, with
    ``KerasState`` and the callback classes of that Keras."""
    from gradsync.tensorflow import elastic

    base = flavor.module.callbacks.Callback

    def make(name: str, behaviour: type) -> type:
        return type(name, (behaviour, base), {"__doc__": behaviour.__doc__})

    return types.SimpleNamespace(
        **{name: getattr(elastic, name) for name in elastic.__all__},
        KerasState=elastic.TensorFlowKerasState,
        CommitStateCallback=make("CommitStateCallback", CommitEveryBatches),
        UpdateBatchStateCallback=make("UpdateBatchStateCallback", TrackBatch),
        UpdateEpochStateCallback=make("UpdateEpochStateCallback", TrackEpoch),
    )
