"""``DistributedOptimizer``: one constructor for every kind of optimizer gradsync supports."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from gradsync.engine.reduce_ops import ReduceOp
from gradsync.tensorflow.ops import Compression, Compressor
from gradsync.tensorflow.ops.compression import compression_name
from gradsync.tensorflow.training.aggregation import CountSteps, GradientAggregator
from gradsync.tensorflow.training.optimizer_keras import is_keras_optimizer, wrap_keras_optimizer
from gradsync.tensorflow.training.optimizer_tf_keras import (
    is_tf_keras_optimizer,
    wrap_tf_keras_optimizer,
)
from gradsync.tensorflow.training.optimizer_v1 import DistributedLegacyOptimizer
from gradsync.tensorflow.training.reduction import make_gradient_allreducer


def DistributedOptimizer(  # noqa: N802 - Horovod's name for a factory
    optimizer: Any,
    name: str | None = None,
    use_locking: bool = False,
    device_dense: str = "",
    device_sparse: str = "",
    compression: Compressor = Compression.none,
    sparse_as_dense: bool = False,
    backward_passes_per_step: int = 1,
    op: ReduceOp = ReduceOp.AVERAGE,
    gradient_predivide_factor: float = 1.0,
    average_aggregated_gradients: bool = False,
    count_steps: CountSteps = "calls",
    raise_on_non_finite: bool = False,
) -> Any:
    """Wraps ``optimizer`` so that every update uses gradients averaged (or summed) over ranks.

    Accepts ``tf.compat.v1.train`` optimizers (v1 graph mode), Keras 3 optimizers (custom loops
    and ``model.fit``) and tf_keras optimizers (TF2, and v1 graph mode through the Keras
    session). With ``backward_passes_per_step=N`` the gradients of N calls are
    summed locally and communicated once; the update is applied on the N-th call only, divided
    by N when ``average_aggregated_gradients``. ``count_steps`` says whether step counters
    (``optimizer.iterations``, a v1 ``global_step``) count every call ("calls", Horovod's
    behaviour) or applied updates only ("updates").
    ``raise_on_non_finite`` raises an error naming the variable whose reduced gradient holds
    an inf or NaN, instead of applying it.
    ``device_dense`` and ``device_sparse`` are accepted for compatibility and ignored.
    """
    aggregator = GradientAggregator(
        backward_passes_per_step,
        make_gradient_allreducer(
            op, compression, sparse_as_dense, gradient_predivide_factor, raise_on_non_finite
        ),
        sparse_as_dense=sparse_as_dense,
        average_aggregated_gradients=average_aggregated_gradients,
        count_steps=count_steps,
        name=f"{name or 'distributed_optimizer'}_aggregation",
    )
    if isinstance(optimizer, tf.compat.v1.train.Optimizer):
        return DistributedLegacyOptimizer(optimizer, aggregator, name, use_locking)
    if is_keras_optimizer(optimizer):
        settings = {
            "name": name,
            "compression": compression_name(compression),
            "sparse_as_dense": sparse_as_dense,
            "backward_passes_per_step": backward_passes_per_step,
            "op": op.value,
            "gradient_predivide_factor": gradient_predivide_factor,
            "average_aggregated_gradients": average_aggregated_gradients,
            "count_steps": count_steps,
            "raise_on_non_finite": raise_on_non_finite,
        }
        return wrap_keras_optimizer(optimizer, aggregator, name, settings)
    if is_tf_keras_optimizer(optimizer):
        return wrap_tf_keras_optimizer(optimizer, aggregator, name)
    raise ValueError(
        "DistributedOptimizer supports tf.compat.v1.train optimizers, Keras 3 optimizers and "
        "tf_keras (Keras 2) optimizers, "
        f"got {type(optimizer).__module__}.{type(optimizer).__name__}."
    )


def distributed_optimizer_from_settings(
    optimizer: Any, settings: dict[str, Any], overrides: dict[str, Any]
) -> Any:
    """``DistributedOptimizer(optimizer, ...)`` with the settings a Keras file saved, where
    ``overrides`` (keyword arguments of ``DistributedOptimizer``) replace some of them."""
    arguments = dict(settings)
    arguments["op"] = ReduceOp(arguments["op"])
    if arguments["compression"] is None and "compression" not in overrides:
        raise ValueError(
            "the optimizer was saved with a custom Compressor, which a file cannot hold: pass "
            "compression=... to load_model."
        )
    arguments["compression"] = getattr(Compression, arguments["compression"] or "none")
    return DistributedOptimizer(optimizer, **{**arguments, **overrides})
