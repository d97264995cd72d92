"""``DistributedOptimizer``: one constructor for every kind of optimizer gradsync supports."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from gradsync.engine import ProcessSet, ReduceOp, global_process_set
from gradsync.tensorflow.ops import Compression, Compressor
from gradsync.tensorflow.training.keras.keras3_optimizer import (
    is_keras_optimizer,
    wrap_keras_optimizer,
)
from gradsync.tensorflow.training.keras.tf_keras_optimizer import (
    is_tf_keras_optimizer,
    wrap_tf_keras_optimizer,
)
from gradsync.tensorflow.training.optimizer_v1 import DistributedLegacyOptimizer
from gradsync.tensorflow.training.reduction import LocalVariables
from gradsync.tensorflow.training.settings import CountSteps, SyncSettings


def distributed_optimizer(
    optimizer: Any,
    settings: SyncSettings,
    name: str | None = None,
    use_locking: bool = False,
    local_variables: LocalVariables | None = None,
) -> Any:
    """Wraps ``optimizer`` (a ``tf.compat.v1.train``, Keras 3 or tf_keras optimizer) so that
    every update uses gradients synchronized as ``settings`` say."""
    if isinstance(optimizer, tf.compat.v1.train.Optimizer):
        return DistributedLegacyOptimizer(optimizer, settings, name, use_locking)
    if is_keras_optimizer(optimizer):
        return wrap_keras_optimizer(optimizer, settings, name, local_variables)
    if is_tf_keras_optimizer(optimizer):
        return wrap_tf_keras_optimizer(optimizer, settings, name, local_variables)
    raise ValueError(
        "DistributedOptimizer supports tf.compat.v1.train optimizers, Keras 3 optimizers and "
        "tf_keras (Keras 2) optimizers, "
        f"got {type(optimizer).__module__}.{type(optimizer).__name__}."
    )


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
    num_groups: int = 0,
    groups: Any = None,
    process_set: ProcessSet = global_process_set,
    scale_local_gradients: bool = True,
    count_steps: CountSteps = "calls",
    raise_on_non_finite: bool = False,
    item_weighted: bool = False,
    bucket_bytes: int | None = None,
) -> Any:
    """Wraps ``optimizer`` so that every update uses gradients averaged (or summed) over ranks.

    Accepts ``tf.compat.v1.train`` optimizers (v1 graph mode), Keras 3 optimizers (custom loops
    and ``model.fit``) and tf_keras optimizers (TF2, and v1 graph mode through the Keras
    session). With ``backward_passes_per_step=N`` the gradients of N calls are summed
    locally and communicated once; the update is applied on the N-th call only, divided by N
    when ``average_aggregated_gradients``. See ``SyncSettings`` for every setting.
    ``device_dense`` and ``device_sparse`` are accepted for compatibility and ignored.
    """
    settings = SyncSettings.from_arguments(locals())
    return distributed_optimizer(optimizer, settings, name, use_locking)
