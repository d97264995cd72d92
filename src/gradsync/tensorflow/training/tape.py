"""``DistributedGradientTape``: a ``tf.GradientTape`` whose gradients are allreduced."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tensorflow as tf

from gradsync.engine import ProcessSet, ReduceOp, global_process_set
from gradsync.tensorflow.ops import Compression, Compressor
from gradsync.tensorflow.training.aggregation import GradientAggregator, advance_counters
from gradsync.tensorflow.training.reduction import LocalVariables, make_gradient_allreducer
from gradsync.tensorflow.training.settings import CountSteps, SyncSettings

#: Where a source variable keeps the aggregators of the tapes that differentiate it, by
#: settings and sources: they live exactly as long as the variable does.
_AGGREGATORS_ATTRIBUTE = "_gradsync_tape_aggregators"


class DistributedGradientTape:
    """Wraps a ``tf.GradientTape``: ``gradient()`` returns gradients reduced over ranks.

    With ``backward_passes_per_step=N`` the gradients of N calls to ``gradient()`` are summed
    locally and communicated once. A new tape is made every step, so the window's state lives
    in an aggregator shared by every tape with the same sources and settings (or the one
    passed as ``aggregator``). Apply them with ``tape.apply_gradients(optimizer,
    zip(grads, variables))``, which updates on the N-th call only (the others return this
    call's local gradients, which must not be applied). Use a plain optimizer with this tape,
    not a ``DistributedOptimizer``, or the gradients are reduced twice.

    With ``item_weighted=True``, ``gradient(loss_sum, sources, items=n)`` takes the summed loss
    of a micro-batch and what it sums over; the update divides by the total count over the
    window and the ranks (see ``SyncSettings``). ``flush(optimizer, sources)`` applies a
    partial window. Sources registered with ``register_local_source`` are aggregated but not
    reduced.
    """

    def __init__(
        self,
        gradtape: tf.GradientTape,
        device_dense: str = "",
        device_sparse: str = "",
        compression: Compressor = Compression.none,
        sparse_as_dense: bool = False,
        op: ReduceOp = ReduceOp.AVERAGE,
        gradient_predivide_factor: float = 1.0,
        num_groups: int = 0,
        groups: Any = None,
        process_set: ProcessSet = global_process_set,
        scale_local_gradients: bool = True,
        backward_passes_per_step: int = 1,
        average_aggregated_gradients: bool = False,
        count_steps: CountSteps = "calls",
        aggregator: GradientAggregator | None = None,
        raise_on_non_finite: bool = False,
        item_weighted: bool = False,
        bucket_bytes: int | None = None,
    ) -> None:
        self._tape = gradtape
        self.settings = SyncSettings.from_arguments(locals())
        self._aggregator = aggregator
        self._local_sources = LocalVariables()

    def register_local_source(self, source: tf.Variable) -> None:
        """Keeps ``source``'s gradient on this rank: aggregated, never reduced."""
        self._local_sources.add(source)

    def aggregator_for(self, sources) -> GradientAggregator:
        """The aggregator that holds the window of ``sources`` for this tape's settings (shared
        by every tape made with the same ones): set its ``backward_passes_per_step`` to change
        N between windows."""
        sources = tf.nest.flatten(sources)
        if self._aggregator is not None:
            return self._aggregator
        key = (
            self.settings,
            tuple(id(s) for s in sources),
            tuple(sorted(id(s) for s in sources if s in self._local_sources)),
        )
        anchor = sources[0] if sources else self
        shared = anchor.__dict__.setdefault(_AGGREGATORS_ATTRIBUTE, {})
        if key not in shared:
            shared[key] = GradientAggregator(
                self.settings,
                make_gradient_allreducer(self.settings, self._local_sources),
                name="gradient_tape_aggregation",
            )
        self._aggregator = shared[key]
        return self._aggregator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tape, name)

    @property
    def process_set(self):
        """The process set the gradients are reduced over."""
        return self.settings.process_set

    @property
    def scale_local_gradients(self) -> bool:
        """Whether local sources' gradients are divided by the number of ranks."""
        return self.settings.scale_local_gradients

    def gradient(
        self,
        target,
        sources,
        output_gradients=None,
        use_generic_names=False,
        items=None,
        **kwargs,
    ):
        """The tape's gradients of ``target``, reduced over ranks (and aggregated).

        ``items``: with ``item_weighted=True``, what the summed loss ``target`` is a sum over.
        ``use_generic_names`` is Horovod's and changes nothing here."""
        gradients = self._tape.gradient(target, sources, output_gradients, **kwargs)
        flat_sources = tf.nest.flatten(sources)
        flat = tf.nest.flatten(gradients, expand_composites=False)
        aggregator = self.aggregator_for(flat_sources)
        reduced = aggregator.compute_gradients(flat, flat_sources, items=items)
        return tf.nest.pack_sequence_as(gradients, reduced)

    def flush(self, optimizer: Any, sources) -> int:
        """Applies with ``optimizer`` the partial window of ``sources`` (every rank's, scaled
        by what each holds) and starts a fresh one; returns the number of updates applied.
        Call it on every rank, eagerly, between steps (see ``GradientAggregator.flush``)."""
        aggregator = self.aggregator_for(sources)
        variables = aggregator.variables_in_window
        return aggregator.flush(
            lambda gradients: optimizer.apply_gradients(zip(gradients, variables, strict=True))
        )

    def get_local_and_global_gradients(
        self, target, sources, output_gradients=None, use_generic_names=False
    ):
        """``gradient()``'s results split as Horovod does: ``(local, global)`` lists of
        ``(source, gradient)`` pairs, local sources first."""
        gradients = self.gradient(target, sources, output_gradients)
        local, reduced = [], []
        for source, gradient in zip(sources, gradients, strict=True):
            (local if source in self._local_sources else reduced).append((source, gradient))
        return local, reduced

    def apply_gradients(self, optimizer: Any, grads_and_vars) -> Any:
        """Applies with ``optimizer`` on the call that synchronized; otherwise only advances
        ``optimizer.iterations`` (when ``count_steps="calls"``)."""
        grads_and_vars = list(grads_and_vars)
        if self._aggregator is None:
            raise RuntimeError("call gradient() on this tape before apply_gradients().")
        return self._aggregator.apply_or_skip(
            lambda: optimizer.apply_gradients(grads_and_vars),
            lambda: advance_counters(optimizer),
            after=[g for g, _ in grads_and_vars],
        )


def PartialDistributedGradientTape(  # noqa: N802 - Horovod's name for a factory
    gradtape: tf.GradientTape,
    device_dense: str = "",
    device_sparse: str = "",
    compression: Compressor = Compression.none,
    sparse_as_dense: bool = False,
    op: ReduceOp = ReduceOp.AVERAGE,
    gradient_predivide_factor: float = 1.0,
    num_groups: int = 0,
    groups: Any = None,
    process_set: ProcessSet = global_process_set,
    local_layers: Iterable[Any] | Any = None,
    scale_local_gradients: bool = True,
    **gradsync_options: Any,
) -> DistributedGradientTape:
    """A ``DistributedGradientTape`` whose ``local_layers``' trainable weights stay local:
    aggregated, never reduced (their gradients are divided by the number of ranks when
    ``scale_local_gradients``, as Horovod does)."""
    tape = DistributedGradientTape(
        gradtape,
        compression=compression,
        sparse_as_dense=sparse_as_dense,
        op=op,
        gradient_predivide_factor=gradient_predivide_factor,
        num_groups=num_groups,
        groups=groups,
        process_set=process_set,
        scale_local_gradients=scale_local_gradients,
        **gradsync_options,
    )
    for variable in local_layer_variables(local_layers):
        tape.register_local_source(variable)
    return tape


def local_layer_variables(local_layers: Iterable[Any] | Any) -> list[tf.Variable]:
    """The trainable weights of ``local_layers`` (a layer or a list of layers)."""
    if local_layers is None:
        return []
    layers = local_layers if isinstance(local_layers, (list, tuple)) else [local_layers]
    variables = []
    for layer in layers:
        if not hasattr(layer, "trainable_weights"):
            raise ValueError(f"local_layers must hold Keras layers, got {layer!r}.")
        variables.extend(layer.trainable_weights)
    return variables
