"""TensorFlow tensors in and out of the engine: collectives usable in every TensorFlow mode."""

from gradsync.tensorflow.ops.collectives import (
    allgather,
    allreduce,
    barrier,
    broadcast,
    broadcast_global_variables,
    broadcast_object,
    broadcast_variables,
    grouped_allreduce,
    is_rank_local,
    mark_rank_local,
)
from gradsync.tensorflow.ops.compression import Compression, Compressor

__all__ = [
    "Compression",
    "Compressor",
    "allgather",
    "allreduce",
    "barrier",
    "broadcast",
    "broadcast_global_variables",
    "broadcast_object",
    "broadcast_variables",
    "grouped_allreduce",
    "is_rank_local",
    "mark_rank_local",
]
