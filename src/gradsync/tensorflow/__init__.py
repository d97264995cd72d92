"""gradsync for TensorFlow, under Horovod's names: change ``import horovod.tensorflow as hvd``
to ``import gradsync.tensorflow as hvd`` and the program runs on gradsync.

Run without a launcher, a program is a world of one process and every collective returns its
input; under ``gradsyncrun -np N`` (or ``mpiexec -n N``) it is one rank of N.
"""

from gradsync.engine import (
    CollectiveMismatchError,
    GradsyncError,
    NotInitializedError,
    ReduceOp,
    cross_rank,
    cross_size,
    init,
    is_initialized,
    local_rank,
    local_size,
    rank,
    shutdown,
    size,
)
from gradsync.tensorflow.ops import (
    Compression,
    Compressor,
    allgather,
    allreduce,
    barrier,
    broadcast,
    broadcast_global_variables,
    broadcast_object,
    broadcast_variables,
    grouped_allreduce,
)
from gradsync.tensorflow.training import (
    BroadcastGlobalVariablesHook,
    DistributedGradientTape,
    DistributedOptimizer,
    LocalGradientAggregationHelper,
    LocalGradientAggregationHelperEager,
)

Average = ReduceOp.AVERAGE
Sum = ReduceOp.SUM
Adasum = ReduceOp.ADASUM

__all__ = [
    "BroadcastGlobalVariablesHook",
    "Adasum",
    "Average",
    "CollectiveMismatchError",
    "Compression",
    "Compressor",
    "DistributedGradientTape",
    "DistributedOptimizer",
    "GradsyncError",
    "LocalGradientAggregationHelper",
    "LocalGradientAggregationHelperEager",
    "NotInitializedError",
    "ReduceOp",
    "Sum",
    "allgather",
    "allreduce",
    "barrier",
    "broadcast",
    "broadcast_global_variables",
    "broadcast_object",
    "broadcast_variables",
    "cross_rank",
    "cross_size",
    "grouped_allreduce",
    "init",
    "is_initialized",
    "local_rank",
    "local_size",
    "rank",
    "shutdown",
    "size",
]
