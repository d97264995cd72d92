"""Reduction operations understood by ``allreduce`` and ``reducescatter``."""

import enum


class ReduceOp(enum.Enum):
    """How a reduction combines the ranks' tensors."""

    AVERAGE = "average"
    SUM = "sum"
    ADASUM = "adasum"
    MIN = "min"
    MAX = "max"
    PRODUCT = "product"


def check_reduce_op(op: object, allowed: tuple[ReduceOp, ...] = tuple(ReduceOp)) -> ReduceOp:
    """Returns ``op`` as a ReduceOp among ``allowed``, or raises a clear error for anything
    else (Adasum is not implemented)."""
    if isinstance(op, ReduceOp) and op in allowed:
        if op is ReduceOp.ADASUM:
            raise NotImplementedError(
                "Adasum is not implemented in gradsync; use op=Average or op=Sum."
            )
        return op
    names = ", ".join(o.name.title() for o in allowed if o is not ReduceOp.ADASUM)
    raise ValueError(f"op must be one of gradsync's {names}, got {op!r}.")
