"""Local gradient aggregation: sum N backward passes locally, communicate once per N.

The semantics are written once, in ``GradientAggregator``, as TensorFlow ops (``tf.cond`` on
counter variables), so the same code serves v1 graphs, ``tf.function`` and eager execution.
For every call with gradients ``g`` (and, item-weighted, the item count ``n``):

1. when the counter is 0, a window starts: the accumulators are set to ``g`` (an assignment,
   so an inf or NaN left by an earlier window cannot leak into this one), the window's weight
   to ``n`` (1 per micro-step without item weights) and its N to the N requested last;
   otherwise ``g`` and ``n`` are added;
2. the counter is incremented;
3. when the counter reaches the window's N, the window is reduced: with op=Average, the sums
   and the weight travel in one fused allreduce and the result is ``sum of gradients / sum of
   weights`` over every rank (times N unless ``average_aggregated_gradients``); with other ops,
   the sums are reduced as the op says (and divided by N if averaged). The counter is reset
   and ``synchronized()`` is then true. On the other calls this call's own gradients are
   returned, and nothing is to be applied.

``flush`` reduces partial windows the same way, in rounds that go on until every rank flushes
(see ``flush_round``). ``apply_or_skip`` applies the update only on the call that
synchronized. On the others it advances the step counters when ``count_steps="calls"`` (the
default, as in Horovod: a counter moves by one per call) and leaves them alone when
``count_steps="updates"`` (so learning-rate schedules and Adam's bias correction count applied
updates).

``LocalGradientAggregationHelper`` and ``LocalGradientAggregationHelperEager`` are Horovod's
names and constructors for the same aggregator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from gradsync import engine
from gradsync.engine import ProcessSet, ReduceOp, global_process_set, rank, size
from gradsync.tensorflow.ops import RANK_LOCAL_COLLECTION, mark_rank_local
from gradsync.tensorflow.ops.bridge import in_v1_graph
from gradsync.tensorflow.training.reduction import (
    GradientAllreduce,
    GradientAllreducer,
    densify,
)
from gradsync.tensorflow.training.settings import SyncSettings, check_backward_passes_per_step


def _new_state_variable(
    shape: Any, dtype: tf.DType, name: str, initial_value: Any = 0
) -> tf.Variable:
    """A non-trainable, rank-local variable, kept out of broadcasts and of model weights.

    In a v1 graph it joins GLOBAL_VARIABLES (so the usual initializer and ``Saver`` cover it)
    and gradsync's rank-local collection (so ``broadcast_global_variables`` skips it).
    """
    if in_v1_graph():
        variable = tf.compat.v1.Variable(
            tf.fill(tf.TensorShape(shape).as_list(), tf.cast(initial_value, dtype)),
            trainable=False,
            name=name,
            use_resource=True,
            collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES, RANK_LOCAL_COLLECTION],
        )
    else:
        with tf.init_scope():
            variable = tf.Variable(
                tf.fill(tf.TensorShape(shape).as_list(), tf.cast(initial_value, dtype)),
                trainable=False,
                name=name,
            )
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
    """Accumulates gradients over windows of ``backward_passes_per_step`` calls, then
    allreduces them.

    Its state is tracked, so a ``tf.train.Checkpoint`` of the optimizer or tape that holds the
    aggregator saves and restores it (in a v1 graph it is in ``GLOBAL_VARIABLES`` for a
    ``Saver``): ``counter`` (micro-steps in the window), ``origin`` (the rank and world size
    that began it), ``weight`` (what the window's sum is a sum over: micro-steps, or items),
    ``passes`` (the N that the next window takes), ``window_passes`` (the current window's N)
    and the ``accumulators``. The state is per rank: a window resumed mid-way must be resumed
    by the rank that saved it, in a world of the same size.
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
        self.count_steps = settings.count_steps
        self.average_aggregated_gradients = settings.average_aggregated_gradients
        self.sparse_as_dense = settings.sparse_as_dense
        self._allreduce = allreduce_func
        # Windows divided by their total weight, which travels with the gradients: what lets
        # partial windows, item weights and ranks with unequal data agree.
        self._weighs_windows = (
            isinstance(allreduce_func, GradientAllreduce) and settings.op is ReduceOp.AVERAGE
        )
        if settings.item_weighted and not self._weighs_windows:
            raise ValueError(
                "item_weighted=True needs gradsync's own gradient reduction; it cannot be "
                "combined with an allreduce_func of your own."
            )
        self._name = name
        self._windowed = settings.aggregates
        self._first_passes = settings.backward_passes_per_step
        self._traced_without_window = False
        #: Whether ``restore_state`` keeps the N given at construction for the next windows
        #: rather than the saved one (a ``load_model`` override).
        self.keep_passes_on_restore = False
        self.counter: tf.Variable | None = None
        self.origin: tf.Variable | None = None
        self.weight: tf.Variable | None = None
        self.passes: tf.Variable | None = None
        self.window_passes: tf.Variable | None = None
        self.accumulators: list[tf.Variable] = []
        self._variables: list[Any] = []
        self._set_passes: tuple[tf.Tensor, tf.Operation] | None = None

    def state(self) -> list[tf.Variable]:
        """The counter, origin, weight, passes, window_passes and the accumulators, in that
        order (none before use)."""
        if self.counter is None:
            return []
        scalars = [self.counter, self.origin, self.weight, self.passes, self.window_passes]
        return [*scalars, *self.accumulators]

    def restore_state(self, values: Sequence[Any]) -> None:
        """Sets the state to ``values`` (as ordered by ``state()``), creating it if needed."""
        values = [np.asarray(v) for v in values]
        scalars = 5
        if self.counter is None:
            self._create_state(
                [(v.shape, tf.as_dtype(v.dtype)) for v in values[scalars:]],
                tf.as_dtype(values[2].dtype),
            )
        if len(values) != len(self.state()):
            raise ValueError(
                f"{self._name}: the saved state has {len(values) - scalars} accumulators, this "
                f"optimizer has {len(self.accumulators)}; it was saved for another model."
            )
        for variable, value in zip(self.state(), values, strict=True):
            variable.assign(value)
        if self.keep_passes_on_restore:
            self.passes.assign(self._first_passes)

    @property
    def aggregates(self) -> bool:
        """Whether gradients are accumulated in windows (N > 1, or weighted by items)."""
        return self._windowed

    @property
    def backward_passes_per_step(self) -> int:
        """N: the number of calls per window. Setting it between windows changes the next
        window's N (a batch-size schedule); set mid-window, it takes effect at the next
        window. It is a variable, so a ``tf.function`` need not be traced again."""
        if self.passes is not None and tf.executing_eagerly():
            return int(self.passes.numpy())
        return self._first_passes

    @backward_passes_per_step.setter
    def backward_passes_per_step(self, value: int) -> None:
        value = check_backward_passes_per_step(value)
        if in_v1_graph():
            raise RuntimeError(
                "in a v1 graph, set backward_passes_per_step with "
                "set_backward_passes_per_step(value, session)."
            )
        if not self._windowed:
            if self._traced_without_window:
                raise ValueError(
                    f"{self._name}: backward_passes_per_step cannot change on an optimizer or "
                    "tape created with backward_passes_per_step=1 once a tf.function has "
                    "used it: it synchronizes every call, with no window to change. Create "
                    "it with backward_passes_per_step > 1 (any N > 1 gives it windows) and "
                    "set the N you start with before training."
                )
            self._windowed = value > 1
        self._first_passes = value
        if self.passes is not None:
            self.passes.assign(value)

    def set_backward_passes_per_step(self, value: int, session: Any = None) -> None:
        """Sets N for the next window; in a v1 graph, through ``session`` (the default
        session when None). The aggregator must have windows already (created with N > 1)."""
        if not in_v1_graph():
            self.backward_passes_per_step = value
            return
        value = check_backward_passes_per_step(value)
        if not self._windowed or self.passes is None:
            raise ValueError(
                f"{self._name}: backward_passes_per_step can change in a v1 graph only when "
                "the optimizer was created with backward_passes_per_step > 1 and its "
                "training op was built."
            )
        session = session or tf.compat.v1.get_default_session()
        feed, assign = self._set_passes
        session.run(assign, {feed: value})
        self._first_passes = value

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
            self._variables = list(variables)
            return
        self._create_state(
            [(_static_shape(g, v), g.dtype) for g, v in zip(gradients, variables, strict=True)],
            tf.float64 if gradients[0].dtype == tf.float64 else tf.float32,
        )
        self._variables = list(variables)

    def _create_state(
        self, accumulator_layouts: Sequence[tuple[Any, tf.DType]], weight_dtype: tf.DType
    ) -> None:
        self.counter = _new_state_variable([], tf.int64, f"{self._name}_counter")
        self.origin = _new_state_variable([2], tf.int64, f"{self._name}_origin")
        self.weight = _new_state_variable([], weight_dtype, f"{self._name}_weight")
        self.passes = _new_state_variable(
            [], tf.int64, f"{self._name}_passes", initial_value=self._first_passes
        )
        self.window_passes = _new_state_variable(
            [], tf.int64, f"{self._name}_window_passes", initial_value=self._first_passes
        )
        if in_v1_graph():  # made now: the graph may be finalized when N is set
            feed = tf.compat.v1.placeholder(tf.int64, [], name=f"{self._name}_new_passes")
            self._set_passes = (feed, self.passes.assign(feed, read_value=False))
        for i, (shape, dtype) in enumerate(accumulator_layouts):
            # Appended one by one, so that a checkpoint restores each as it is created.
            self.accumulators.append(
                _new_state_variable(shape, dtype, f"{self._name}_accumulator_{i}")
            )

    def _check_items(self, items: Any) -> None:
        if items is not None and not self.settings.item_weighted:
            raise ValueError(
                f"{self._name}: items= was given, but this optimizer or tape was created "
                "without item_weighted=True, so the count would be ignored. Create it with "
                "item_weighted=True (and pass the gradients of the summed loss), or drop items=."
            )
        if items is None and self.settings.item_weighted:
            raise ValueError(
                f"{self._name}: item_weighted=True needs each micro-step's item count: pass "
                "items= (the number of samples, tokens or unmasked positions the summed loss "
                "is a sum over, or the sum of their weights); in model.fit, add gradsync's "
                "AggregationCallback."
            )

    @tf.autograph.experimental.do_not_convert  # control flow here is explicit tf.cond
    def compute_gradients(
        self,
        gradients: Sequence[Any],
        variables: Sequence[Any] | None = None,
        items: Any = None,
    ) -> list[tf.Tensor | None]:
        """Adds ``gradients`` to the window; returns what to apply if this call synchronized.

        With ``item_weighted``, ``gradients`` are those of this micro-step's summed loss and
        ``items`` what it sums over. None gradients come back as None in their positions.
        """
        self._check_items(items)
        gradients = list(gradients)
        variables = list(variables) if variables is not None else [None] * len(gradients)
        if not self.aggregates:
            if not tf.executing_eagerly():
                self._traced_without_window = True
            return self._allreduce(gradients, variables)
        gradients = [self._prepare(g) for g in gradients]
        positions = [i for i, g in enumerate(gradients) if g is not None]
        if not positions:
            return gradients
        present = [gradients[i] for i in positions]
        self._build(present, [variables[i] for i in positions])

        pairs = list(zip(self.accumulators, present, strict=True))
        here = tf.constant([rank(), size()], tf.int64)
        weight = tf.cast(1 if items is None else items, self.weight.dtype)

        def restart_window():
            assigns = [a.assign(g, read_value=False) for a, g in pairs]
            assigns += [
                self.origin.assign(here, read_value=False),
                self.weight.assign(weight, read_value=False),
                self.window_passes.assign(self.passes, read_value=False),
            ]
            return _done_after(assigns)

        def add_to_window():
            assigns = [a.assign_add(g, read_value=False) for a, g in pairs]
            return _done_after([*assigns, self.weight.assign_add(weight, read_value=False)])

        with tf.control_dependencies([self._check_origin(here)]):
            window_start = tf.equal(self.counter, 0)
        accumulated = tf.cond(window_start, restart_window, add_to_window)
        with tf.control_dependencies([accumulated]):
            count = self.counter.assign_add(1)
        outputs = tf.cond(
            tf.greater_equal(count, self.window_passes),
            self._synchronize,
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
                f"{self._name}: this window of backward passes was begun by [rank, world size] =",
                self.origin.read_value(),
                "and cannot be continued by",
                here,
                ". Restore on every rank the checkpoint that it saved, in a world of the same "
                "size, or resume from a checkpoint saved at the end of a window.",
            ],
            name="check_aggregation_origin",
        )

    def _multiplier(self) -> tf.Tensor | float:
        """What the window's mean gradient is multiplied by: N unless averaged over it."""
        return 1.0 if self.average_aggregated_gradients else self.window_passes.read_value()

    def _synchronize(self) -> list[tf.Tensor]:
        window = [accumulator.read_value() for accumulator in self.accumulators]
        if self._weighs_windows:
            reduced, _, _ = self._allreduce.reduce_window(
                window,
                self._variables,
                self.weight.read_value(),
                self._multiplier(),
                flushing=False,
            )
        else:
            reduced = self._allreduce(window, self._variables)
            if self.average_aggregated_gradients:
                passes = self.window_passes.read_value()
                reduced = [r / tf.cast(passes, r.dtype) for r in reduced]
        with tf.control_dependencies(reduced):
            reset = self.counter.assign(0, read_value=False)
        with tf.control_dependencies([reset] if reset is not None else []):
            return [tf.identity(r) for r in reduced]

    @tf.autograph.experimental.do_not_convert
    def flush_round(self) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
        """One round of a flush: contributes this rank's partial window (or nothing, once it
        has none), to be divided by what every rank's window holds.

        Returns ``(gradients, has_update, all_flushing)``: apply the gradients when
        ``has_update``; rounds go on until ``all_flushing``, so that a rank whose data ran out
        first keeps taking part in the others' synchronizations (and applies their updates)
        until every rank flushes.
        """
        if not self._weighs_windows:
            raise ValueError(
                f"{self._name}: flush needs op=Average and gradsync's own gradient reduction."
            )
        if self.counter is None:
            raise RuntimeError(
                f"{self._name}: flush was called before any gradients were computed; every "
                "rank must compute gradients at least once before it flushes."
            )
        has_window = tf.greater(self.counter, 0)
        window = tf.cond(
            has_window,
            lambda: [a.read_value() for a in self.accumulators],
            lambda: [tf.zeros_like(a) for a in self.accumulators],
        )
        if not isinstance(window, (list, tuple)):
            window = [window]
        weight = tf.where(has_window, self.weight.read_value(), tf.zeros([], self.weight.dtype))
        reduced, total, flushing = self._allreduce.reduce_window(
            list(window), self._variables, weight, self._multiplier(), flushing=True
        )
        with tf.control_dependencies([*reduced, total, flushing]):
            reset = self.counter.assign(0, read_value=False)
        group = engine.group_of(self.settings.process_set, "gradient flush")
        with tf.control_dependencies([reset] if reset is not None else []):
            has_update = tf.greater(total, 0)
            all_flushing = tf.greater_equal(flushing, group.size - 0.5)
            return [tf.identity(r) for r in reduced], has_update, all_flushing

    def flush(self, apply: Callable[[list[tf.Tensor]], Any]) -> int:
        """Applies the partial windows of every rank with ``apply(gradients)``, scaled by what
        they hold, and starts fresh windows; returns the number of updates applied.

        Every rank calls it (at the end of an epoch, say); a rank that gets there first keeps
        taking part in the others' synchronizations until they flush too. Runs eagerly, between
        steps: in a v1 graph, see ``DistributedOptimizer.flush``.
        """
        if not tf.executing_eagerly():
            raise RuntimeError(
                f"{self._name}: flush() runs eagerly, between training steps: call it outside "
                "tf.function. In a v1 graph, tf.compat.v1.train's DistributedOptimizer has "
                "flush(session)."
            )
        if not self.aggregates:
            return 0
        applied = 0
        while True:
            gradients, has_update, all_flushing = self.flush_round()
            if bool(has_update):
                apply(gradients)
                applied += 1
            if bool(all_flushing):
                return applied

    @property
    def can_flush(self) -> bool:
        """Whether partial windows can be flushed (windows weighed by their content, which
        needs op=Average and gradsync's own reduction)."""
        return self.aggregates and self._weighs_windows

    @property
    def variables_in_window(self) -> list[Any]:
        """The variables whose gradients the accumulators hold, in their order."""
        return list(self._variables)

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
