"""gradsync for Keras 3, under Horovod's ``horovod.tensorflow.keras`` names.

For tf_keras (Keras 2), use ``gradsync.tensorflow.tf_keras``: the same names.
"""

from gradsync.tensorflow import (
    Average,
    Compression,
    Sum,
    allgather,
    allreduce,
    barrier,
    broadcast,
    broadcast_object,
    broadcast_variables,
    init,
    is_initialized,
    local_rank,
    local_size,
    rank,
    shutdown,
    size,
)
from gradsync.tensorflow.keras import callbacks
from gradsync.tensorflow.keras.saving import load_model
from gradsync.tensorflow.training import DistributedOptimizer

__all__ = [
    "Average",
    "Compression",
    "DistributedOptimizer",
    "Sum",
    "allgather",
    "allreduce",
    "barrier",
    "broadcast",
    "broadcast_object",
    "broadcast_variables",
    "callbacks",
    "init",
    "is_initialized",
    "load_model",
    "local_rank",
    "local_size",
    "rank",
    "shutdown",
    "size",
]
