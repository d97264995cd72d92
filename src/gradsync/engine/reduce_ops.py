"""Reduction operations understood by ``allreduce``."""

import enum


class ReduceOp(enum.Enum):
    """How ``allreduce`` combines the ranks' tensors."""

    AVERAGE = "average"
    SUM = "sum"
    ADASUM = "adasum"


def check_reduce_op(op: object) -> ReduceOp:
    """Returns ``op`` as a ReduceOp, or raises a clear error for anything else."""
    if isinstance(op, ReduceOp):
        if op is ReduceOp.ADASUM:
            raise NotImplementedError(
                "Adasum is not implemented in gradsync; use op=Average or op=Sum."
            )
        return op
    raise ValueError(
        f"op must be gradsync's Average or Sum, got {op!r}. "
        "Use gradsync.tensorflow.Average or gradsync.tensorflow.Sum."
    )
