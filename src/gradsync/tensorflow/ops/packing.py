"""Small tensors cross into the engine packed together.

Handing a tensor to the engine through ``tf.numpy_function`` costs more than copying a small
one: about 15 microseconds each, or a millisecond for a model's 60 gradients. So before an
element-wise collective (allreduce, broadcast), the tensors under ``SMALL_BYTES`` whose shape
is known are concatenated, one tensor per dtype, and the results cut back after. The engine is
told the dtype and shape of every tensor a packed array holds, so the ranks still compare each
of them, and a disagreement names the tensor by its place in the caller's list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from gradsync.engine import TensorSpec

#: Tensors smaller than this are packed: copying them costs less than handing them over.
SMALL_BYTES = 256 << 10


def _is_small(tensor: tf.Tensor) -> bool:
    shape = tensor.shape
    return shape.is_fully_defined() and shape.num_elements() * tensor.dtype.size < SMALL_BYTES


def _flat(tensor: tf.Tensor) -> tf.Tensor:
    """``tensor`` as one dimension (each reshape is one more op to run per step)."""
    return tensor if tensor.shape.rank == 1 else tf.reshape(tensor, [-1])


@dataclasses.dataclass
class Packing:
    """How a list of tensors travels: ``carried`` crosses to the engine; its first
    ``len(singles)`` tensors are the caller's tensors at positions ``singles``, and each one
    after holds the small tensors at the positions of one of ``groups``, in order."""

    tensors: Sequence[tf.Tensor]
    singles: list[int]
    groups: list[list[int]]
    carried: list[tf.Tensor]
    #: The dtype and shape of each packed tensor (known when the graph is built); None for
    #: the others, whose shape is read from their array at run time.
    packed_specs: list[TensorSpec | None]

    @classmethod
    def of(cls, tensors: Sequence[tf.Tensor]) -> Packing | None:
        """How ``tensors`` travel, or None when no two small tensors share a dtype."""
        by_dtype: dict[tf.DType, list[int]] = {}
        singles = []
        for position, tensor in enumerate(tensors):
            if _is_small(tensor):
                by_dtype.setdefault(tensor.dtype, []).append(position)
            else:
                singles.append(position)
        groups = []
        for positions in by_dtype.values():
            if len(positions) == 1:
                singles += positions
            else:
                groups.append(positions)
        if not groups:
            return None
        singles.sort()
        carried = [tensors[p] for p in singles] + [
            tf.concat([_flat(tensors[p]) for p in group], axis=0) for group in groups
        ]
        packed_specs: list[TensorSpec | None] = [None] * len(tensors)
        for group in groups:
            for position in group:
                tensor = tensors[position]
                dtype = np.dtype(tensor.dtype.as_numpy_dtype)
                packed_specs[position] = (dtype, tuple(tensor.shape.as_list()))
        return cls(tensors, singles, groups, carried, packed_specs)

    def tensor_specs(self, arrays: Sequence[np.ndarray]) -> list[TensorSpec]:
        """The dtype and shape of each of the caller's tensors, given the carried arrays."""
        specs = list(self.packed_specs)
        for position, array in zip(self.singles, arrays, strict=False):
            specs[position] = (array.dtype, array.shape)
        return specs  # type: ignore[return-value]

    def unpack(self, outputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """The results for the caller's tensors, in its order, from the carried results."""
        results: list[tf.Tensor | None] = [None] * len(self.tensors)
        for position, output in zip(self.singles, outputs, strict=False):
            results[position] = output
        for group, packed in zip(self.groups, outputs[len(self.singles) :], strict=True):
            shapes = [self.tensors[p].shape for p in group]
            pieces = tf.split(packed, [s.num_elements() for s in shapes], axis=0)
            for position, piece, shape in zip(group, pieces, shapes, strict=True):
                results[position] = piece if shape.rank == 1 else tf.reshape(piece, shape)
        return results  # type: ignore[return-value]
