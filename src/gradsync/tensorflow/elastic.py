"""Elastic training with TensorFlow, under Horovod's names (``horovod.tensorflow.elastic``):
``run``, ``State``, ``ObjectState``, ``TensorFlowState``, ``TensorFlowKerasState``,
``HostsUpdatedInterrupt``, ``WorkerLostError``. See ``gradsync.elastic`` for how a relaunch
carries the committed state.

Commits are taken at window boundaries: the gradient accumulators of an aggregating optimizer
are rank-local and are not committed. A commit taken mid-window records the window's start
(the weights and slots have not changed since; ``batch`` and, with ``count_steps="calls"``,
the step counter are moved back by the micro-steps the window holds), so those micro-batches
are replayed after a relaunch: never lost, never counted twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from gradsync.elastic.state import (
    HostsUpdatedInterrupt,
    ObjectState,
    State,
    WorkerLostError,
    run,
)


class _Snapshots:
    """Two sets of numpy arrays that snapshots of the same variables take turns to fill:
    a commit is then one copy into memory already in use, and the previous snapshot stays
    whole while the next is taken."""

    def __init__(self) -> None:
        self._slots: list[list[np.ndarray]] = [[], []]
        self._turn = 0

    def take(self, variables: list) -> list[np.ndarray]:
        self._turn = 1 - self._turn
        slot = self._slots[self._turn]
        values = [tf.convert_to_tensor(v) for v in variables]  # reads, without a copy
        if [a.shape for a in slot] != [tuple(v.shape) for v in values]:
            slot[:] = [np.empty(v.shape, v.dtype.as_numpy_dtype) for v in values]
        for array, value in zip(slot, values, strict=True):
            np.copyto(array, value)
        return list(slot)


def _held_micro_steps(optimizer: Any) -> int:
    """How many micro-steps the optimizer's current aggregation window holds."""
    aggregator = getattr(optimizer, "_gradsync_aggregator", None)
    if aggregator is None or aggregator.counter is None:
        return 0
    return int(aggregator.counter.numpy())


def _drop_window(optimizer: Any) -> None:
    aggregator = getattr(optimizer, "_gradsync_aggregator", None)
    if aggregator is not None and aggregator.counter is not None:
        aggregator.counter.assign(0)


class TensorFlowState(State):
    """The values of ``variables`` (eager execution), and keyword-argument attributes."""

    def __init__(self, variables: list[tf.Variable] | None = None, session: Any = None, **kwargs):
        if session is not None:
            raise ValueError(
                "gradsync's elastic TensorFlowState runs with eager execution; it takes no session."
            )
        super().__init__(**kwargs)
        self.variables = list(variables or [])
        self._snapshots = _Snapshots()

    def save(self) -> Any:
        return {**super().save(), "variables": self._snapshots.take(self.variables)}

    def load(self, snapshot: Any) -> None:
        super().load(snapshot)
        for variable, value in zip(self.variables, snapshot["variables"], strict=True):
            variable.assign(value)


class TensorFlowKerasState(State):
    """A Keras model's weights and its optimizer's state (Keras 3 or tf_keras), and
    keyword-argument attributes such as ``epoch`` and ``batch``. ``optimizer`` defaults to the
    model's; ``backend`` is Horovod's and unused."""

    def __init__(self, model: Any, optimizer: Any = None, backend: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model
        self.optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        self._snapshots = _Snapshots()

    def _optimizer_variables(self) -> list:
        optimizer = self.optimizer
        if optimizer is None:
            return []
        from gradsync.tensorflow.training.keras.callbacks import build_optimizer_state

        return build_optimizer_state(optimizer, list(self.model.trainable_variables))

    def save(self) -> Any:
        snapshot = super().save()
        held = _held_micro_steps(self.optimizer)
        weights = list(self.model.weights)
        values = self._snapshots.take(weights + self._optimizer_variables())
        optimizer_values = values[len(weights) :]
        if held:
            snapshot["attributes"] = self._window_start(snapshot["attributes"], held)
            optimizer_values = self._rewound_counter(optimizer_values, held)
        snapshot["model"] = values[: len(weights)]
        snapshot["optimizer"] = optimizer_values
        return snapshot

    def _window_start(self, attributes: dict, held: int) -> dict:
        if "batch" not in attributes:
            return attributes
        batch = attributes["batch"] - held
        if batch < 0:
            raise ValueError(
                f"a commit {held} micro-steps into an aggregation window would rewind batch "
                f"to {batch}: the window began in an earlier epoch. Flush at each epoch's end "
                "(optimizer.flush(), or AggregationCallback in fit)."
            )
        return {**attributes, "batch": batch}

    def _rewound_counter(self, values: list, held: int) -> list:
        settings = getattr(self.optimizer, "gradsync_settings", None)
        if settings is None or settings.count_steps != "calls":
            return values
        iterations = self.optimizer.iterations
        for i, variable in enumerate(self._optimizer_variables()):
            if variable is iterations:
                values[i] = values[i] - held
        return values

    def load(self, snapshot: Any) -> None:
        super().load(snapshot)
        self.model.set_weights(snapshot["model"])
        variables = self._optimizer_variables()
        if len(variables) != len(snapshot["optimizer"]):
            raise ValueError(
                f"the committed optimizer state has {len(snapshot['optimizer'])} variables, "
                f"this optimizer {len(variables)}: it was committed for another optimizer."
            )
        for variable, value in zip(variables, snapshot["optimizer"], strict=True):
            variable.assign(value)
        _drop_window(self.optimizer)


__all__ = [
    "HostsUpdatedInterrupt",
    "ObjectState",
    "State",
    "TensorFlowKerasState",
    "TensorFlowState",
    "WorkerLostError",
    "run",
]
