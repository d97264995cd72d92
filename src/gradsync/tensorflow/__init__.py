"""gradsync for TensorFlow, under Horovod's names: change ``import horovod.tensorflow as hvd``
to ``import gradsync.tensorflow as hvd`` and the program runs on gradsync.

Run without a launcher, a program is a world of one process and every collective returns its
input; under ``gradsyncrun -np N`` (or ``mpiexec -n N``) it is one rank of N.
"""

from gradsync.engine import (
    GradsyncError,
    NotInitializedError,
    ProcessSet,
    ReduceOp,
    StallError,
    add_process_set,
    cross_rank,
    cross_size,
    global_process_set,
    init,
    is_initialized,
    local_rank,
    local_size,
    rank,
    remove_process_set,
    shutdown,
    size,
    start_timeline,
    stop_timeline,
)
from gradsync.tensorflow import elastic
from gradsync.tensorflow.horovod_helpers import (
    check_extension,
    check_num_rank_power_of_2,
    gpu_available,
    handle_average_backwards_compatibility,
    is_version_greater_equal_than,
    refs_to_vars,
    split_list,
    vars_to_refs,
)
from gradsync.tensorflow.ops import (
    CollectiveMismatchError,
    Compression,
    Compressor,
    allgather,
    allgather_object,
    allreduce,
    alltoall,
    barrier,
    broadcast,
    broadcast_,
    broadcast_global_variables,
    broadcast_object,
    broadcast_object_fn,
    broadcast_variables,
    ccl_built,
    cuda_built,
    ddl_built,
    gloo_built,
    gloo_enabled,
    grouped_allgather,
    grouped_allreduce,
    grouped_reducescatter,
    is_homogeneous,
    join,
    local_rank_op,
    local_size_op,
    mpi_built,
    mpi_enabled,
    mpi_threads_supported,
    nccl_built,
    process_set_included_op,
    rank_op,
    reducescatter,
    rocm_built,
    size_op,
)
from gradsync.tensorflow.training import (
    BroadcastGlobalVariablesHook,
    DistributedGradientTape,
    DistributedOptimizer,
    LocalGradientAggregationHelper,
    LocalGradientAggregationHelperEager,
    PartialDistributedGradientTape,
    SyncSettings,
)


def __getattr__(name: str):
    # Made on first use: it subclasses the BatchNormalization of the Keras tf.keras is.
    if name == "SyncBatchNormalization":
        from gradsync.tensorflow.training.keras.flavors import flavor_of_tf_keras
        from gradsync.tensorflow.training.keras.sync_batch_norm import (
            sync_batch_normalization_class,
        )

        return sync_batch_normalization_class(flavor_of_tf_keras())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Average = ReduceOp.AVERAGE
Sum = ReduceOp.SUM
Adasum = ReduceOp.ADASUM
Min = ReduceOp.MIN
Max = ReduceOp.MAX
Product = ReduceOp.PRODUCT

__all__ = [
    "elastic",
    "Adasum",
    "Average",
    "BroadcastGlobalVariablesHook",
    "CollectiveMismatchError",
    "Compression",
    "Compressor",
    "DistributedGradientTape",
    "DistributedOptimizer",
    "GradsyncError",
    "LocalGradientAggregationHelper",
    "LocalGradientAggregationHelperEager",
    "Max",
    "Min",
    "NotInitializedError",
    "PartialDistributedGradientTape",
    "ProcessSet",
    "Product",
    "ReduceOp",
    "StallError",
    "Sum",
    "SyncBatchNormalization",
    "SyncSettings",
    "add_process_set",
    "allgather",
    "allgather_object",
    "allreduce",
    "alltoall",
    "barrier",
    "broadcast",
    "broadcast_",
    "broadcast_global_variables",
    "broadcast_object",
    "broadcast_object_fn",
    "broadcast_variables",
    "ccl_built",
    "check_extension",
    "check_num_rank_power_of_2",
    "cross_rank",
    "cross_size",
    "cuda_built",
    "ddl_built",
    "global_process_set",
    "gloo_built",
    "gloo_enabled",
    "gpu_available",
    "grouped_allgather",
    "grouped_allreduce",
    "grouped_reducescatter",
    "handle_average_backwards_compatibility",
    "init",
    "is_homogeneous",
    "is_initialized",
    "is_version_greater_equal_than",
    "join",
    "local_rank",
    "local_rank_op",
    "local_size",
    "local_size_op",
    "mpi_built",
    "mpi_enabled",
    "mpi_threads_supported",
    "nccl_built",
    "process_set_included_op",
    "rank",
    "rank_op",
    "reducescatter",
    "refs_to_vars",
    "remove_process_set",
    "rocm_built",
    "shutdown",
    "size",
    "size_op",
    "split_list",
    "start_timeline",
    "stop_timeline",
    "vars_to_refs",
]
