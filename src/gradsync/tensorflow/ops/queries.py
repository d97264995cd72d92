"""Questions about the world, as Python values and as TensorFlow ops (Horovod's names)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from mpi4py import MPI

from gradsync import engine


def _query_op(answer, name: str | None, default_name: str) -> tf.Tensor:
    """An int32 op that asks ``answer()`` when it runs (at once, eagerly)."""
    if tf.executing_eagerly():
        return tf.constant(answer(), tf.int32, name=name)
    op = tf.numpy_function(
        lambda: np.int32(answer()), [], tf.int32, stateful=True, name=name or default_name
    )
    op.set_shape([])
    return op


def _process_set(process_set_id: int) -> engine.ProcessSet | None:
    for process_set in engine.registered_process_sets():
        if process_set.process_set_id == process_set_id:
            return process_set
    return None


def rank_op(name: str | None = None) -> tf.Tensor:
    """This process's rank, as an int32 op."""
    return _query_op(engine.rank, name, "rank")


def local_rank_op(name: str | None = None) -> tf.Tensor:
    """This process's rank on its machine, as an int32 op."""
    return _query_op(engine.local_rank, name, "local_rank")


def local_size_op(name: str | None = None) -> tf.Tensor:
    """The number of processes on this machine, as an int32 op."""
    return _query_op(engine.local_size, name, "local_size")


def size_op(process_set_id: int = 0, name: str | None = None) -> tf.Tensor:
    """The number of ranks in the process set ``process_set_id`` (0: the world), as an int32
    op; -1 for an unknown set."""

    def answer() -> int:
        process_set = _process_set(process_set_id)
        return -1 if process_set is None else process_set.size()

    return _query_op(answer, name, "size")


def process_set_included_op(process_set_id: int = 0, name: str | None = None) -> tf.Tensor:
    """1 if this rank is in the process set ``process_set_id``, 0 if not, -1 for an unknown
    set; an int32 op."""

    def answer() -> int:
        process_set = _process_set(process_set_id)
        return -1 if process_set is None else int(process_set.included())

    return _query_op(answer, name, "process_set_included")


def is_homogeneous() -> bool:
    """Whether every machine runs the same number of ranks."""
    return engine.current("is_homogeneous()").homogeneous


def mpi_threads_supported() -> bool:
    """Whether the MPI library was started with full thread support (MPI_THREAD_MULTIPLE)."""
    engine.current("mpi_threads_supported()")
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def mpi_built() -> bool:
    """gradsync always communicates through MPI."""
    return True


def mpi_enabled() -> bool:
    """gradsync always communicates through MPI."""
    return True


def gloo_built() -> bool:
    """gradsync has no Gloo controller."""
    return False


def gloo_enabled() -> bool:
    """gradsync has no Gloo controller."""
    return False


def nccl_built() -> int:
    """gradsync does not use NCCL (0, where Horovod gives its NCCL version)."""
    return 0


def ddl_built() -> bool:
    """gradsync does not use IBM DDL."""
    return False


def ccl_built() -> bool:
    """gradsync does not use oneCCL."""
    return False


def cuda_built() -> bool:
    """gradsync's collectives run on host memory; none is built for CUDA."""
    return False


def rocm_built() -> bool:
    """gradsync's collectives run on host memory; none is built for ROCm."""
    return False
