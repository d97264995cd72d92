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
from gradsync.tensorflow.ops.bridge import in_v1_graph
from gradsync.tensorflow.training.keras.flavors import KerasFlavor
from gradsync.tensorflow.training.keras.wrapping import SynchronizingOptimizer


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


def _is_built(model: Any) -> bool:
    """Whether every layer of ``model`` has its variables (a model without an input shape gets
    them when ``fit`` traces its first step)."""
    if not getattr(model, "built", False):
        return False
    return all(getattr(layer, "built", True) for layer in model._flatten_layers())


class BroadcastOnTrainBegin:
    """Starts every rank from ``root_rank``'s model and optimizer state.

    Where the model is built when training begins, it builds the optimizer (so its slots
    exist) and broadcasts the model's and the optimizer's variables before the first update.
    A model that ``fit`` builds on its first batch has no variables then: as Horovod, the
    broadcast comes at the end of the first batch, once, and every rank continues from the
    root's weights and optimizer state after that batch. Gradient accumulators, variables
    registered as local, and ``local_variables`` are left alone. ``device`` is accepted for
    compatibility.
    """

    model: Any

    def __init__(self, root_rank: int = 0, device: str = "", local_variables=None) -> None:
        super().__init__()
        self.root_rank = engine.check_root_rank(root_rank, engine.size())
        self.device = device
        self.local_variables = list(local_variables or [])
        self._broadcast_after_first_batch = False

    def on_train_begin(self, logs=None) -> None:
        self._broadcast_after_first_batch = not _is_built(self.model)
        if not self._broadcast_after_first_batch:
            self._broadcast()

    def on_train_batch_end(self, batch, logs=None) -> None:
        if self._broadcast_after_first_batch:
            self._broadcast_after_first_batch = False
            self._broadcast()

    def _broadcast(self) -> None:
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


class AggregateByEpoch:
    """Keeps aggregation windows exact in ``model.fit`` (add it when N > 1 or the optimizer
    is item-weighted; put it first, so that later callbacks see the flushed weights).

    - At each epoch's end it flushes the partial window (``optimizer.flush()``): the epoch's
      last micro-batches are applied, scaled by what they hold, never dropped nor carried into
      the next epoch; ranks with fewer batches take part in the others' last synchronizations.
    - With an ``item_weighted`` optimizer it counts the items of every batch: ``"samples"``
      (its first dimension; Keras's default loss reduction divides by it, so the windows equal
      Keras's own big batch), or ``"sample_weights"`` (the sum of the batch's sample weights,
      which makes the update that of the weighted mean loss).
    - ``backward_passes_schedule(epoch) -> N`` sets N at each epoch's start (a batch-size
      schedule; the window before was flushed, so the new N starts a fresh window).
    """

    model: Any

    def __init__(
        self,
        items: str = "samples",
        flush_at_epoch_end: bool = True,
        backward_passes_schedule: Callable[[int], int] | None = None,
    ) -> None:
        super().__init__()
        if items not in ("samples", "sample_weights"):
            raise ValueError(f'items must be "samples" or "sample_weights", got {items!r}.')
        self.items = items
        self.flush_at_epoch_end = flush_at_epoch_end
        self.backward_passes_schedule = backward_passes_schedule

    def _optimizer(self) -> SynchronizingOptimizer:
        optimizer = getattr(self.model, "optimizer", None)
        if not isinstance(optimizer, SynchronizingOptimizer):
            raise ValueError(
                "AggregationCallback needs a model compiled with gradsync's "
                f"DistributedOptimizer, got {type(optimizer).__name__}."
            )
        return optimizer

    def on_train_begin(self, logs=None) -> None:
        optimizer = self._optimizer()
        if in_v1_graph():
            raise RuntimeError(
                "AggregationCallback runs with eager execution enabled (TF2 model.fit); in a "
                "v1 graph, aggregate with tf.compat.v1.train optimizers and flush(session)."
            )
        if optimizer.gradsync_settings.item_weighted:
            self._count_batch_items(optimizer)

    def _count_batch_items(self, optimizer: SynchronizingOptimizer) -> None:
        model = self.model
        if getattr(model, "_gradsync_counts_batch_items", None) == self.items:
            return
        train_step = type(model).train_step.__get__(model)
        count = optimizer.count_fit_batches()
        by_weights = self.items == "sample_weights"

        def counted_train_step(data):
            x, sample_weight = _inputs_and_sample_weight(data)
            samples = tf.shape(tf.nest.flatten(x)[0])[0]
            items = samples
            if by_weights and sample_weight is not None:
                items = tf.reduce_sum(tf.cast(sample_weight, tf.float32))
            with tf.control_dependencies(count.set(samples, items)):
                return train_step(data)

        model.train_step = counted_train_step
        model._gradsync_counts_batch_items = self.items
        model.make_train_function(force=True)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        if self.backward_passes_schedule is not None:
            self._optimizer().backward_passes_per_step = self.backward_passes_schedule(epoch)

    def on_epoch_end(self, epoch, logs=None) -> None:
        if self.flush_at_epoch_end:
            self._optimizer().flush()


def _inputs_and_sample_weight(data) -> tuple[Any, Any]:
    """``x`` and the sample weights (or None) of a batch as ``fit`` gives it to ``train_step``:
    ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``."""
    if isinstance(data, list):
        data = tuple(data)
    if not isinstance(data, tuple):
        return data, None
    return data[0], data[2] if len(data) == 3 else None


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
        AggregationCallback=make("AggregationCallback", AggregateByEpoch, callbacks.Callback),
    )
