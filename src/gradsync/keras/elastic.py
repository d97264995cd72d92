"""Elastic training with Keras, under Horovod's names, for standalone Keras 3: ``run``,
``KerasState``, ``CommitStateCallback``, ``UpdateBatchStateCallback``,
``UpdateEpochStateCallback`` (see ``gradsync.tensorflow.elastic``)."""

# ruff: noqa: F401
from gradsync.tensorflow.elastic import (
    HostsUpdatedInterrupt,
    ObjectState,
    State,
    TensorFlowKerasState,
    WorkerLostError,
    run,
)
from gradsync.tensorflow.training.keras.elastic_callbacks import elastic_callback_classes
from gradsync.tensorflow.training.keras.flavors import KERAS_3

KerasState = TensorFlowKerasState
_classes = elastic_callback_classes(KERAS_3)
CommitStateCallback = _classes.CommitStateCallback
UpdateBatchStateCallback = _classes.UpdateBatchStateCallback
UpdateEpochStateCallback = _classes.UpdateEpochStateCallback
__all__ = [
    "CommitStateCallback",
    "HostsUpdatedInterrupt",
    "KerasState",
    "ObjectState",
    "State",
    "UpdateBatchStateCallback",
    "UpdateEpochStateCallback",
    "WorkerLostError",
    "run",
]
