"""Horovod's Keras optimizer constructors: ``DistributedOptimizer`` (with the parameter order
of ``horovod.tensorflow.keras``) and ``PartialDistributedOptimizer``."""

from __future__ import annotations

from typing import Any

from gradsync.engine import ProcessSet, ReduceOp, global_process_set
from gradsync.tensorflow.ops import Compression, Compressor
from gradsync.tensorflow.training.optimizer import distributed_optimizer
from gradsync.tensorflow.training.settings import CountSteps, SyncSettings
from gradsync.tensorflow.training.tape import local_layer_variables


def DistributedOptimizer(  # noqa: N802 - Horovod's name for a factory
    optimizer: Any,
    name: str | None = None,
    device_dense: str = "",
    device_sparse: str = "",
    compression: Compressor = Compression.none,
    sparse_as_dense: bool = False,
    gradient_predivide_factor: float = 1.0,
    op: ReduceOp = ReduceOp.AVERAGE,
    backward_passes_per_step: int = 1,
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
    """A copy of the Keras ``optimizer`` (Keras 3 or tf_keras) whose every update uses
    gradients reduced over ranks; see ``gradsync.tensorflow.DistributedOptimizer``.

    Unlike Horovod's, ``apply_gradients`` called directly also synchronizes, so a custom
    loop needs no ``_compute_gradients`` call (it returns local gradients, reduced when
    applied).
    """
    settings = SyncSettings.from_arguments(locals())
    return distributed_optimizer(optimizer, settings, name)


def PartialDistributedOptimizer(  # noqa: N802 - Horovod's name for a factory
    optimizer: Any,
    name: str | None = None,
    device_dense: str = "",
    device_sparse: str = "",
    compression: Compressor = Compression.none,
    sparse_as_dense: bool = False,
    gradient_predivide_factor: float = 1.0,
    op: ReduceOp = ReduceOp.AVERAGE,
    backward_passes_per_step: int = 1,
    average_aggregated_gradients: bool = False,
    groups: Any = None,
    process_set: ProcessSet = global_process_set,
    local_layers: Any = None,
    scale_local_gradients: bool = True,
    **gradsync_options: Any,
) -> Any:
    """A ``DistributedOptimizer`` whose ``local_layers``' trainable weights stay local:
    aggregated but never reduced nor broadcast (their gradients are divided by the number of
    ranks when ``scale_local_gradients``, as Horovod does)."""
    wrapped = DistributedOptimizer(
        optimizer,
        name=name,
        compression=compression,
        sparse_as_dense=sparse_as_dense,
        gradient_predivide_factor=gradient_predivide_factor,
        op=op,
        backward_passes_per_step=backward_passes_per_step,
        average_aggregated_gradients=average_aggregated_gradients,
        groups=groups,
        process_set=process_set,
        scale_local_gradients=scale_local_gradients,
        **gradsync_options,
    )
    for variable in local_layer_variables(local_layers):
        wrapped.register_local_var(variable)
    return wrapped
