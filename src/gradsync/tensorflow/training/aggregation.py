"""Local gradient aggregation: sum N backward passes locally, communicate once per N.

The semantics are written once, in ``GradientAggregator``, as TensorFlow ops (``tf.cond`` on a
counter variable), so the same code serves v1 graphs, ``tf.function`` and eager execution.
For every call with gradients ``g``:

1. when the counter is 0, the accumulators are set to ``g`` (an assignment, so an inf or NaN
   left by an earlier window cannot leak into this one); otherwise ``g`` is added to them;
2. the counter is incremented;
3. when the counter reaches N, the accumulators are allreduced in one fused communication,
   divided by N if ``average_aggregated_gradients``, and the counter is reset to 0. Those are
   the gradients returned, and ``synchronized()`` is then true. On the other calls this call's
   own gradients are returned, and nothing is to be applied.

``apply_or_skip`` applies the update only on the call that synchronized. On the others it
advances the step counters when ``count_steps="calls"`` (the default, as in Horovod: a counter
moves by one per call) and leaves them alone when ``count_steps="updates"`` (so learning-rate
schedules and Adam's bias correction count applied updates).

``LocalGradientAggregationHelper`` and ``LocalGradientAggregationHelperEager`` are Horovod's
names and constructors for the same aggregator.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from gradsync.engine import ProcessSet, global_process_set, rank, size
from gradsync.tensorflow.ops import RANK_LOCAL_COLLECTION, mark_rank_local
from gradsync.tensorflow.ops.bridge import in_v1_graph
from gradsync.tensorflow.training.reduction import GradientAllreducer, densify
from gradsync.tensorflow.training.settings import SyncSettings


def _new_state_variable(shape: tf.TensorShape, dtype: tf.DType, name: str) -> tf.Variable:
    """A non-trainable, rank-local variable, kept out of broadcasts and of model weights.

    In a v1 graph it joins GLOBAL_VARIABLES (so the usual initializer and ``Saver`` cover it)
    and gradsync's rank-local collection (so ``broadcast_global_variables`` skips it).
    """
    if in_v1_graph():
        variable = tf.compat.v1.Variable(
            tf.zeros(shape, dtype),
            trainable=False,
            name=name,
            use_resource=True,
            collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES, RANK_LOCAL_COLLECTION],
        )
    else:
        with tf.init_scope():
            variable = tf.Variable(tf.zeros(shape, dtype), trainable=False, name=name)
    return mark_rank_local(variable)


def _static_shape(gradient: tf.Tensor, variable: Any) -> tf.TensorShape:
    shape = gradient.shape
    if not shape.is_fully_defined() and variable is not None:
        shape = tf.TensorShape(variable.shape)
    if not shape.is_fully_defined():
        raise ValueError(
            f"gradient aggregation needs gradients of known shape, got {gradient.shape}."
        )
    return shape


class GradientAggregator(tf.Module):
    """Accumulates gradients over ``backward_passes_per_step`` calls, then allreduces them.

    Its state (``counter``, ``accumulators``, and ``origin``: the rank and world size that
    started the current window) is tracked, so a ``tf.train.Checkpoint`` of the optimizer or
    tape that holds the aggregator saves and restores it; in a v1 graph it is in
    ``GLOBAL_VARIABLES`` for a ``Saver``. The state is per rank: a window resumed mid-way must
    be resumed by the rank that saved it, in a world of the same size.
    """

    def __init__(
        self,
        settings: SyncSettings,
        allreduce_func: GradientAllreducer,
        name: str = "gradient_aggregation",
    ) -> None:
        # An identifier that starts with a letter, as tf.Module and v1 graph op names require.
        name = re.sub(r"\W", "_", name)
        if not name[:1].isalpha():
            name = f"gradsync_{name}"
        super().__init__(name=name)
        self.settings = settings
        self.backward_passes_per_step = settings.backward_passes_per_step
        self.count_steps = settings.count_steps
        self.average_aggregated_gradients = settings.average_aggregated_gradients
        self.sparse_as_dense = settings.sparse_as_dense
        self._allreduce = allreduce_func
        # Averaging over the window then happens inside the reduction, with no pass of its own.
        self._allreduce_scales = _takes_scale(allreduce_func)
        self._name = name
        self.counter: tf.Variable | None = None
        self.origin: tf.Variable | None = None
        self.accumulators: list[tf.Variable] = []

    def state(self) -> list[tf.Variable]:
        """The counter, the origin and the accumulators, in that order (none before use)."""
        return [] if self.counter is None else [self.counter, self.origin, *self.accumulators]

    def restore_state(self, values: Sequence[Any]) -> None:
        """Sets the state to ``values`` (as ordered by ``state()``), creating it if needed."""
        values = [np.asarray(v) for v in values]
        if self.counter is None:
            self._create_state([(v.shape, tf.as_dtype(v.dtype)) for v in values[2:]])
        if len(values) != len(self.state()):
            raise ValueError(
                f"{self._name}: the saved state has {len(values) - 2} accumulators, this "
                f"optimizer has {len(self.accumulators)}; it was saved for another model."
            )
        for variable, value in zip(self.state(), values, strict=True):
            variable.assign(value)

    @property
    def aggregates(self) -> bool:
        """Whether gradients are accumulated at all (N > 1)."""
        return self.settings.aggregates

    def _prepare(self, gradient):
        if isinstance(gradient, tf.IndexedSlices):
            if not self.sparse_as_dense:
                raise ValueError(
                    "gradient aggregation (backward_passes_per_step > 1) received a sparse "
                    "gradient (tf.IndexedSlices); set sparse_as_dense=True to accumulate it "
                    "as a dense tensor."
                )
            return densify(gradient, True)
        return None if gradient is None else tf.convert_to_tensor(gradient)

    def _build(self, gradients: Sequence[tf.Tensor], variables: Sequence[Any]) -> None:
        if self.counter is not None:
            if len(gradients) != len(self.accumulators):
                raise ValueError(
                    f"{self._name}: this call has {len(gradients)} non-None gradients, earlier "
                    f"calls had {len(self.accumulators)}; the set of variables with gradients "
                    "must stay the same from call to call."
                )
            return
        self._create_state(
            [(_static_shape(g, v), g.dtype) for g, v in zip(gradients, variables, strict=True)]
        )

    def _create_state(self, accumulator_layouts: Sequence[tuple[Any, tf.DType]]) -> None:
        self.counter = _new_state_variable([], tf.int64, f"{self._name}_counter")
        self.origin = _new_state_variable([2], tf.int64, f"{self._name}_origin")
        for i, (shape, dtype) in enumerate(accumulator_layouts):
            # Appended one by one, so that a checkpoint restores each as it is created.
            self.accumulators.append(
                _new_state_variable(shape, dtype, f"{self._name}_accumulator_{i}")
            )

    @tf.autograph.experimental.do_not_convert  # control flow here is explicit tf.cond
    def compute_gradients(
        self, gradients: Sequence[Any], variables: Sequence[Any] | None = None
    ) -> list[tf.Tensor | None]:
        """Adds ``gradients`` to the window; returns what to apply if this call synchronized.

        None gradients come back as None in their positions.
        """
        gradients = list(gradients)
        variables = list(variables) if variables is not None else [None] * len(gradients)
        if not self.aggregates:
            return self._allreduce(gradients, variables)
        gradients = [self._prepare(g) for g in gradients]
        positions = [i for i, g in enumerate(gradients) if g is not None]
        if not positions:
            return gradients
        present = [gradients[i] for i in positions]
        self._build(present, [variables[i] for i in positions])

        pairs = list(zip(self.accumulators, present, strict=True))
        here = tf.constant([rank(), size()], tf.int64)

        def restart_window():
            assigns = [a.assign(g, read_value=False) for a, g in pairs]
            return _done_after([*assigns, self.origin.assign(here, read_value=False)])

        def add_to_window():
            return _done_after([a.assign_add(g, read_value=False) for a, g in pairs])

        with tf.control_dependencies([self._check_origin(here)]):
            window_start = tf.equal(self.counter, 0)
        accumulated = tf.cond(window_start, restart_window, add_to_window)
        with tf.control_dependencies([accumulated]):
            count = self.counter.assign_add(1)
        outputs = tf.cond(
            tf.equal(count, self.backward_passes_per_step),
            lambda: self._synchronize([variables[i] for i in positions]),
            lambda: [tf.identity(g) for g in present],
        )
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        results: list[tf.Tensor | None] = [None] * len(gradients)
        for position, output in zip(positions, outputs, strict=True):
            results[position] = output
        return results

    def _check_origin(self, here: tf.Tensor) -> tf.Operation:
        """Refuses to continue a window that another rank, or a world of another size, began
        (a checkpoint restored mid-window on the wrong rank)."""
        same_origin = tf.reduce_all(tf.equal(self.origin, here))
        return tf.debugging.Assert(
            tf.logical_or(tf.equal(self.counter, 0), same_origin),
            [
                f"{self._name}: this window of backward_passes_per_step="
                f"{self.backward_passes_per_step} was begun by [rank, world size] =",
                self.origin.read_value(),
                "and cannot be continued by",
                here,
                ". Restore on every rank the checkpoint that it saved, in a world of the same "
                "size, or resume from a checkpoint saved at the end of a window.",
            ],
            name="check_aggregation_origin",
        )

    def _synchronize(self, variables: Sequence[Any]) -> list[tf.Tensor]:
        window = [accumulator.read_value() for accumulator in self.accumulators]
        divide = self.average_aggregated_gradients
        if divide and self._allreduce_scales:
            reduced = self._allreduce(window, variables, scale=1 / self.backward_passes_per_step)
            divide = False
        else:
            reduced = self._allreduce(window, variables)
        with tf.control_dependencies(reduced):
            reset = self.counter.assign(0, read_value=False)
        with tf.control_dependencies([reset] if reset is not None else []):
            if divide:
                return [r / tf.cast(self.backward_passes_per_step, r.dtype) for r in reduced]
            return [tf.identity(r) for r in reduced]

    def synchronized(self, after: Sequence[Any] = ()) -> tf.Tensor | bool:
        """True on the call whose ``compute_gradients`` just synchronized (read after ``after``)."""
        if not self.aggregates:
            return True
        if self.counter is None:
            raise RuntimeError("apply was called before any gradients were computed.")
        dependencies = [g for g in after if g is not None and not isinstance(g, tf.IndexedSlices)]
        with tf.control_dependencies(dependencies):
            return tf.equal(self.counter.read_value(), 0)

    @tf.autograph.experimental.do_not_convert
    def apply_or_skip(
        self,
        apply: Callable[[], Any],
        advance_step_counters: Callable[[], Any],
        after: Sequence[Any] = (),
    ) -> Any:
        """Runs ``apply`` on the call that synchronized, else only advances the step counters.

        ``advance_step_counters`` runs on skipped calls when ``count_steps="calls"``.
        """
        if not self.aggregates:
            return apply()

        def applied():
            return _done_after(apply())

        def skipped():
            if self.count_steps == "calls":
                return _done_after(advance_step_counters())
            return tf.constant(False)

        return tf.cond(self.synchronized(after), applied, skipped)

    def apply_gradients(self, apply_grads_closure, optimizer, *args, **kwargs):
        """Horovod's form of ``apply_or_skip``: runs ``apply_grads_closure`` on synchronizing
        calls; on the others advances ``optimizer.iterations`` (if it has one) and the
        ``global_step`` keyword argument."""
        grads_and_vars = list(args[0]) if args else []
        return self.apply_or_skip(
            apply_grads_closure,
            lambda: advance_counters(optimizer, kwargs.get("global_step")),
            after=[g for g, _ in grads_and_vars],
        )


def _takes_scale(allreduce_func: GradientAllreducer) -> bool:
    """Whether ``allreduce_func`` takes ``scale=`` (those of ``make_gradient_allreducer`` do; a
    Horovod-style function given by the user may not)."""
    try:
        return "scale" in inspect.signature(allreduce_func).parameters
    except (TypeError, ValueError):
        return False


def _done_after(result: Any) -> tf.Tensor:
    """A boolean tensor that is ready once ``result`` (ops, tensors, variables) is."""
    if tf.executing_eagerly():
        return tf.constant(True)
    dependencies = []
    for item in tf.nest.flatten(result):
        if isinstance(item, (tf.Tensor, tf.Operation)):
            dependencies.append(item)
        elif isinstance(item, tf.Variable):
            dependencies.append(item.read_value())
    with tf.control_dependencies(dependencies):
        return tf.constant(True)


class LocalGradientAggregationHelper(GradientAggregator):
    """Horovod's graph-mode helper, with its constructor: ``rank`` and ``optimizer_type`` are
    accepted for compatibility; the state is per helper, never per rank or shared."""

    _OPTIMIZER_TYPE_KERAS = "optimizer_type_keras"
    _OPTIMIZER_TYPE_LEGACY = "optimizer_type_legacy"

    def __init__(
        self,
        backward_passes_per_step: int,
        allreduce_func: GradientAllreducer,
        sparse_as_dense: bool,
        average_aggregated_gradients: bool,
        rank: int = 0,
        optimizer_type: str = _OPTIMIZER_TYPE_LEGACY,
        process_set: ProcessSet = global_process_set,
        scale_local_gradients: bool = True,
        name: str | None = None,
        count_steps: str = "calls",
    ) -> None:
        settings = SyncSettings.from_arguments(locals())
        super().__init__(settings, allreduce_func, name or "gradient_aggregation")
        self.rank = rank
        self.optimizer_type = optimizer_type


class LocalGradientAggregationHelperEager(GradientAggregator):
    """Horovod's eager helper, with its constructor (backward_passes_per_step,
    allreduce_func, sparse_as_dense, average_aggregated_gradients, process_set,
    scale_local_gradients, name); also usable in ``tf.function``."""

    def __init__(
        self,
        backward_passes_per_step: int,
        allreduce_func: GradientAllreducer,
        sparse_as_dense: bool = False,
        average_aggregated_gradients: bool = False,
        process_set: ProcessSet = global_process_set,
        scale_local_gradients: bool = True,
        name: str | None = None,
        count_steps: str = "calls",
    ) -> None:
        settings = SyncSettings.from_arguments(locals())
        super().__init__(settings, allreduce_func, name or "gradient_aggregation")


def advance_counters(optimizer: Any = None, global_step: tf.Variable | None = None) -> list:
    """Adds one to ``optimizer.iterations`` (when it has one) and to ``global_step``."""
    updates = []
    iterations = getattr(optimizer, "iterations", None) if optimizer is not None else None
    if iterations is not None:
        updates.append(iterations.assign_add(1))
    if global_step is not None:
        updates.append(tf.compat.v1.assign_add(global_step, 1))
    return updates
