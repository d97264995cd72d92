"""gradsync's Keras callbacks, written once for Keras 3 and tf_keras.

``callback_classes(flavor)`` makes the classes for one Keras: each combines a behaviour
defined here with that Keras's ``Callback`` (or ``ModelCheckpoint``) base class. The public
modules (``gradsync.tensorflow.keras.callbacks`` and friends) pick the flavor.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from gradsync import engine
from gradsync.tensorflow.ops import broadcast_variables
from gradsync.tensorflow.training.keras.flavors import KerasFlavor


def build_optimizer_state(optimizer: Any, variables: list) -> list:
    """Creates ``optimizer``'s slots for ``variables`` if needed; returns its variables."""
    if hasattr(optimizer, "_create_all_weights"):  # tf_keras's legacy family
        optimizer._create_all_weights(variables)
        return list(optimizer.weights)
    if not getattr(optimizer, "built", False):  # tf_keras's build is idempotent; Keras 3's not
        optimizer.build(variables)
    return list(optimizer.variables)


def _run_in_keras_session(op: tf.Operation) -> None:
    import tf_keras

    tf_keras.backend.batch_get_value([op])


class BroadcastOnTrainBegin:
    """Starts every rank from ``root_rank``'s model and optimizer state.

    At the start of training it builds the optimizer (so its slots exist) and broadcasts the
    model's and the optimizer's variables. Gradient accumulators, variables registered as
    local, and ``local_variables`` are left alone. ``device`` is accepted for compatibility.
    """

    model: Any

    def __init__(self, root_rank: int = 0, device: str = "", local_variables=None) -> None:
        super().__init__()
        self.root_rank = engine.check_root_rank(root_rank, engine.size())
        self.device = device
        self.local_variables = list(local_variables or [])

    def on_train_begin(self, logs=None) -> None:
        variables = list(self.model.variables)
        optimizer = self.model.optimizer
        if optimizer is not None:
            variables += build_optimizer_state(optimizer, list(self.model.trainable_variables))
        skipped = {id(v) for v in self.local_variables}
        variables = [v for v in variables if id(v) not in skipped]
        assign = broadcast_variables(variables, self.root_rank)
        if assign is not None:  # a v1 graph: run in the Keras session
            _run_in_keras_session(assign)


class AverageMetricsOnEpochEnd:
    """Replaces each epoch's metrics in ``logs`` by their average over ranks, so that every
    rank (and callbacks after this one) sees the metrics of the whole dataset."""

    def __init__(self, device: str = "") -> None:
        super().__init__()
        self.device = device

    def on_epoch_end(self, epoch, logs=None) -> None:
        if not logs:
            return
        names = sorted(k for k, v in logs.items() if np.ndim(v) == 0)
        values = np.array([float(logs[k]) for k in names], dtype=np.float64)
        (averaged,) = engine.allreduce([values], engine.ReduceOp.AVERAGE, name="metrics")
        logs.update(dict(zip(names, averaged.tolist(), strict=True)))


def _value(optimizer: Any, name: str) -> float:
    value = getattr(optimizer, name)
    if tf.executing_eagerly():
        return float(np.asarray(value))
    import tf_keras  # only tf_keras runs models in a v1 session

    return float(tf_keras.backend.get_value(value))


class ScheduleLearningRate:
    """Sets the learning rate to ``initial_lr * multiplier(epoch)`` from ``start_epoch`` up to
    (not including) ``end_epoch``, as Horovod's ``LearningRateScheduleCallback`` (a constant
    ``multiplier`` m gives ``initial_lr * m ** (epoch - start_epoch)``).

    With ``staircase`` (always, for a constant ``multiplier``) the rate changes at the first
    batch of each epoch; otherwise at every batch, with the epoch counted fractionally over
    ``steps_per_epoch`` (found from ``fit``'s parameters when not given). With
    ``momentum_correction``, an optimizer's ``momentum`` is scaled by new_lr / old_lr for the
    batch in which the rate changed, then restored (Goyal et al., 2017). Keras 3 compiles its
    momentum into the train step as a constant, so there the correction reaches only steps
    traced afterwards; tf_keras optimizers take it at once.
    """

    model: Any
    params: dict

    def __init__(
        self,
        initial_lr: float,
        multiplier: float | Callable[[float], float],
        start_epoch: int = 0,
        end_epoch: int | None = None,
        staircase: bool = True,
        momentum_correction: bool = True,
        steps_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if initial_lr is None:
            raise ValueError("Parameter `initial_lr` is required")
        self.initial_lr = initial_lr
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.staircase = staircase
        self.momentum_correction = momentum_correction
        self.steps_per_epoch = steps_per_epoch
        if callable(multiplier):
            self.multiplier = multiplier
        else:  # as Horovod: a constant multiplies once per epoch after start_epoch
            self.staircase = True
            self.multiplier = lambda epoch: multiplier ** (epoch - start_epoch)
        self.current_epoch: int | None = None
        self.restore_momentum: float | None = None

    def _autodetect_steps_per_epoch(self) -> int:
        if self.params.get("steps"):
            return self.params["steps"]
        if self.params.get("samples") and self.params.get("batch_size"):
            return self.params["samples"] // self.params["batch_size"]
        raise ValueError(
            "Could not autodetect the number of steps per epoch. Please specify the "
            f"steps_per_epoch parameter to the {type(self).__name__}()."
        )

    def _adjust_learning_rate(self, epoch: float) -> None:
        optimizer = self.model.optimizer
        old_lr = _value(optimizer, "learning_rate")
        new_lr = self.initial_lr * self.multiplier(epoch)
        optimizer.learning_rate = new_lr  # each Keras assigns its variable or hyperparameter
        if self.momentum_correction and hasattr(optimizer, "momentum") and old_lr:
            self.restore_momentum = _value(optimizer, "momentum")
            optimizer.momentum = self.restore_momentum * new_lr / old_lr

    def on_train_begin(self, logs=None) -> None:
        if not self.staircase and not self.steps_per_epoch:
            self.steps_per_epoch = self._autodetect_steps_per_epoch()

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None) -> None:
        epoch = self.current_epoch
        if epoch < self.start_epoch or (self.end_epoch is not None and epoch >= self.end_epoch):
            return
        if self.staircase and batch == 0:
            self._adjust_learning_rate(epoch)
        elif not self.staircase:
            self._adjust_learning_rate(epoch + float(batch) / self.steps_per_epoch)

    def on_train_batch_end(self, batch, logs=None) -> None:
        if self.restore_momentum:
            self.model.optimizer.momentum = self.restore_momentum
            self.restore_momentum = None

    def on_epoch_end(self, epoch, logs=None) -> None:
        if logs is not None:
            logs["lr"] = _value(self.model.optimizer, "learning_rate")


class WarmUpLearningRate(ScheduleLearningRate):
    """Raises the learning rate gradually from ``initial_lr / size`` to ``initial_lr`` over
    ``warmup_epochs`` epochs, batch by batch, as Horovod's ``LearningRateWarmupCallback``
    (Goyal et al., 2017): at fractional epoch ``e`` the rate is
    ``initial_lr / size * ((e + 1 / steps_per_epoch) * (size - 1) / warmup_epochs + 1)``."""

    def __init__(
        self,
        initial_lr: float,
        warmup_epochs: int = 5,
        momentum_correction: bool = True,
        steps_per_epoch: int | None = None,
        verbose: int = 0,
    ) -> None:
        def multiplier(epoch: float) -> float:
            size = engine.size()
            epoch += 1.0 / self.steps_per_epoch
            return 1.0 / size * (epoch * (size - 1) / warmup_epochs + 1)

        super().__init__(
            initial_lr,
            multiplier,
            start_epoch=0,
            end_epoch=warmup_epochs,
            staircase=False,
            momentum_correction=momentum_correction,
            steps_per_epoch=steps_per_epoch,
        )
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None) -> None:
        super().on_epoch_end(epoch, logs)
        if epoch == self.end_epoch - 1 and self.verbose > 0:
            new_lr = _value(self.model.optimizer, "learning_rate")
            print(f"\nEpoch {epoch + 1}: finished gradual learning rate warmup to {new_lr:g}.")


class SaveBestOnRootRank:
    """Saves the model with the best ``monitor`` value, from rank 0 only (Horovod's
    ``BestModelCheckpoint``: a ``ModelCheckpoint`` with ``save_best_only=True``).
    ``filepath`` may be given here or set as an attribute before training (Horovod's
    estimators set it); it defaults to ``best_model.keras``."""

    def __init__(
        self,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        filepath: str | None = None,
    ) -> None:
        default = "best_model.weights.h5" if save_weights_only else "best_model.keras"
        super().__init__(
            filepath=filepath or default,
            monitor=monitor,
            verbose=verbose,
            save_best_only=True,
            save_weights_only=save_weights_only,
            mode=mode,
            save_freq=save_freq,
        )

    def _save_model(self, *args, **kwargs):
        if engine.rank() != 0:
            return None
        return super()._save_model(*args, **kwargs)


@functools.cache
def callback_classes(flavor: KerasFlavor) -> types.SimpleNamespace:
    """gradsync's callback classes for one Keras (made once per flavor)."""
    callbacks = flavor.module.callbacks

    def make(name: str, behaviour: type, base: type) -> type:
        return type(name, (behaviour, base), {"__doc__": behaviour.__doc__})

    return types.SimpleNamespace(
        BroadcastGlobalVariablesCallback=make(
            "BroadcastGlobalVariablesCallback", BroadcastOnTrainBegin, callbacks.Callback
        ),
        MetricAverageCallback=make(
            "MetricAverageCallback", AverageMetricsOnEpochEnd, callbacks.Callback
        ),
        LearningRateScheduleCallback=make(
            "LearningRateScheduleCallback", ScheduleLearningRate, callbacks.Callback
        ),
        LearningRateWarmupCallback=make(
            "LearningRateWarmupCallback", WarmUpLearningRate, callbacks.Callback
        ),
        BestModelCheckpoint=make(
            "BestModelCheckpoint", SaveBestOnRootRank, callbacks.ModelCheckpoint
        ),
    )
