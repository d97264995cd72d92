"""Small public helpers of ``horovod.tensorflow`` that programs sometimes call, with their
behaviour for gradsync (which has no compiled extension and no GPU build)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from packaging.version import Version

from gradsync.engine import ReduceOp
from gradsync.tensorflow.ops import resolve_op


def handle_average_backwards_compatibility(op: ReduceOp | None, average: bool | None) -> ReduceOp:
    """Horovod's deprecated ``average=`` and ``op=`` resolved to one op (Average by default)."""
    return resolve_op(op, average)


def split_list(l: Sequence[Any], n: int) -> list[list[Any]]:  # noqa: E741 - Horovod's name
    """``l`` cut into ``n`` consecutive parts whose lengths differ by at most one."""
    d, r = divmod(len(l), n)
    return [list(l[i * d + min(i, r) : (i + 1) * d + min(i + 1, r)]) for i in range(n)]


def vars_to_refs(vars: Sequence[Any]) -> list[Any]:  # noqa: A002 - Horovod's name
    """Hashable references of variables (``variable.ref()``)."""
    return [v.ref() for v in vars]


def refs_to_vars(refs: Sequence[Any]) -> list[Any]:
    """The variables behind references made by ``vars_to_refs``."""
    return [r.deref() for r in refs]


def check_num_rank_power_of_2(num_rank: int) -> bool:
    """Whether ``num_rank`` is a power of two."""
    return num_rank > 0 and num_rank & (num_rank - 1) == 0


def is_version_greater_equal_than(ver: str, target: str) -> bool:
    """Whether version ``ver`` is at least ``target``."""
    return Version(ver) >= Version(target)


def gpu_available(ext_base_name: str = "", verbose: bool = False) -> bool:
    """Whether the collectives run on GPUs: never in gradsync (host memory through MPI)."""
    return False


def check_extension(ext_name: str, ext_env_var: str, pkg_path: str, *args: Any) -> None:
    """Horovod checks here that its compiled extension loads; gradsync is pure Python, so
    there is nothing to check and this returns."""
