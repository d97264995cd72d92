"""``DistributedGradientTape``: a ``tf.GradientTape`` whose gradients are allreduced."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from gradsync.engine.reduce_ops import ReduceOp
from gradsync.tensorflow.ops import Compression, Compressor
from gradsync.tensorflow.training.aggregation import (
    CountSteps,
    GradientAggregator,
    advance_counters,
    check_backward_passes_per_step,
    check_count_steps,
)
from gradsync.tensorflow.training.reduction import make_gradient_allreducer

# Aggregators by (sources, settings); each entry keeps its sources alive so ids stay unique.
_SHARED_AGGREGATORS: dict[tuple, tuple[GradientAggregator, list]] = {}


class DistributedGradientTape:
    """Wraps a ``tf.GradientTape``: ``gradient()`` returns gradients reduced over ranks.

    With ``backward_passes_per_step=N`` the gradients of N calls to ``gradient()`` are summed
    locally and communicated once. A new tape is made every step, so the window's state lives
    in an aggregator shared by every tape with the same sources and settings (or the one
    passed as ``aggregator``). Apply them with ``tape.apply_gradients(optimizer,
    zip(grads, variables))``, which updates on the N-th call only (the others return this
    call's local gradients, which must not be applied). Use a plain optimizer with this tape,
    not a ``DistributedOptimizer``, or the gradients are reduced twice.
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
        backward_passes_per_step: int = 1,
        average_aggregated_gradients: bool = False,
        count_steps: CountSteps = "calls",
        aggregator: GradientAggregator | None = None,
        raise_on_non_finite: bool = False,
    ) -> None:
        self._tape = gradtape
        check_backward_passes_per_step(backward_passes_per_step)
        self._aggregator = aggregator
        self._reduction = (
            op,
            compression,
            sparse_as_dense,
            gradient_predivide_factor,
            raise_on_non_finite,
        )
        self._aggregation = (backward_passes_per_step, average_aggregated_gradients, count_steps)
        # Refuse bad settings here, at construction, rather than at the first gradient().
        make_gradient_allreducer(*self._reduction)
        check_count_steps(count_steps)

    def _aggregator_for(self, sources: list) -> GradientAggregator:
        if self._aggregator is None:
            key = (tuple(id(s) for s in sources), self._reduction, self._aggregation)
            if key not in _SHARED_AGGREGATORS:
                passes, average, count = self._aggregation
                _SHARED_AGGREGATORS[key] = (
                    GradientAggregator(
                        passes,
                        make_gradient_allreducer(*self._reduction),
                        sparse_as_dense=self._reduction[2],
                        average_aggregated_gradients=average,
                        count_steps=count,
                        name="gradient_tape_aggregation",
                    ),
                    sources,
                )
            self._aggregator = _SHARED_AGGREGATORS[key][0]
        return self._aggregator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tape, name)

    def gradient(self, target, sources, output_gradients=None, **kwargs):
        """The tape's gradients of ``target``, reduced over ranks (and aggregated)."""
        gradients = self._tape.gradient(target, sources, output_gradients, **kwargs)
        flat_sources = tf.nest.flatten(sources)
        flat = tf.nest.flatten(gradients, expand_composites=False)
        reduced = self._aggregator_for(flat_sources).compute_gradients(flat, flat_sources)
        return tf.nest.pack_sequence_as(gradients, reduced)

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
