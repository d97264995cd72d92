"""The communication engine: MPI processes and collectives on numpy arrays.

Nothing here knows of any machine-learning framework: frontends (``gradsync.tensorflow``)
hand it numpy arrays and use only the names exported here. Every collective goes through a
coordinator that checks, before any data moves, that all ranks are issuing the same operation
on arrays of the same kind, so that a program whose ranks disagree gets a clear error on every
rank instead of wrong numbers or a hang.
"""

from gradsync.engine.collectives import (
    TensorSpec,
    allgather,
    allgather_object,
    allreduce,
    alltoall,
    barrier,
    broadcast,
    broadcast_object,
    check_reducible,
    check_root_rank,
    join,
    reducescatter,
    split_rows,
    start_timeline,
    stop_timeline,
)
from gradsync.engine.errors import (
    CollectiveMismatchError,
    GradsyncError,
    NotInitializedError,
    WorkerLostError,
)
from gradsync.engine.process_sets import (
    ProcessSet,
    add_process_set,
    global_process_set,
    group_of,
    init,
    registered_process_sets,
    remove_process_set,
)
from gradsync.engine.reduce_ops import ReduceOp, check_reduce_op
from gradsync.engine.stall import StallError
from gradsync.engine.world import (
    cross_rank,
    cross_size,
    current,
    is_initialized,
    local_rank,
    local_size,
    rank,
    shutdown,
    size,
)


def executed_counts() -> dict[str, int]:
    """How many collectives of each kind this process has executed in the world since
    ``init()``, and how many header exchanges (``"negotiation"``) it took to agree on them."""
    return current("executed_counts()").coordinator.executed_counts()


__all__ = [
    "CollectiveMismatchError",
    "GradsyncError",
    "NotInitializedError",
    "ProcessSet",
    "ReduceOp",
    "StallError",
    "WorkerLostError",
    "TensorSpec",
    "add_process_set",
    "allgather",
    "allgather_object",
    "allreduce",
    "alltoall",
    "barrier",
    "broadcast",
    "broadcast_object",
    "check_reduce_op",
    "check_reducible",
    "check_root_rank",
    "cross_rank",
    "cross_size",
    "current",
    "executed_counts",
    "global_process_set",
    "group_of",
    "init",
    "is_initialized",
    "join",
    "local_rank",
    "local_size",
    "rank",
    "reducescatter",
    "registered_process_sets",
    "remove_process_set",
    "shutdown",
    "size",
    "split_rows",
    "start_timeline",
    "stop_timeline",
]
