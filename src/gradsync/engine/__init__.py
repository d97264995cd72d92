"""The communication engine: MPI processes and collectives on numpy arrays.

Nothing here imports TensorFlow. Every collective goes through one coordinator that checks,
before any data moves, that all ranks are issuing the same operation on tensors of the same
kind, so that a program whose ranks disagree gets a clear error instead of wrong numbers.
"""

from gradsync.engine.collectives import (
    allgather,
    allreduce,
    barrier,
    broadcast,
    broadcast_object,
)
from gradsync.engine.coordinator import executed_counts
from gradsync.engine.errors import (
    CollectiveMismatchError,
    GradsyncError,
    NotInitializedError,
)
from gradsync.engine.reduce_ops import ReduceOp
from gradsync.engine.world import (
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

__all__ = [
    "CollectiveMismatchError",
    "GradsyncError",
    "NotInitializedError",
    "ReduceOp",
    "allgather",
    "allreduce",
    "barrier",
    "broadcast",
    "broadcast_object",
    "executed_counts",
    "cross_rank",
    "cross_size",
    "init",
    "is_initialized",
    "local_rank",
    "local_size",
    "rank",
    "shutdown",
    "size",
]
