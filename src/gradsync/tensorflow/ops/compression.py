"""Compression of tensors on the wire: ``Compression.none`` and ``Compression.fp16``."""

from __future__ import annotations

from typing import Any

import tensorflow as tf


class Compressor:
    """Turns a tensor into the one that is communicated, and back."""

    def compress(self, tensor: tf.Tensor) -> tuple[tf.Tensor, Any]:
        """Returns the tensor to send and what ``decompress`` needs to restore it."""
        raise NotImplementedError

    def decompress(self, tensor: tf.Tensor, context: Any) -> tf.Tensor:
        """Restores a received tensor to the form it had before ``compress``."""
        raise NotImplementedError


class NoneCompressor(Compressor):
    """Sends tensors as they are."""

    def compress(self, tensor: tf.Tensor) -> tuple[tf.Tensor, Any]:
        return tensor, None

    def decompress(self, tensor: tf.Tensor, context: Any) -> tf.Tensor:
        return tensor


class FP16Compressor(Compressor):
    """Sends floating tensors as float16 (half the bytes), restoring their dtype on arrival."""

    def compress(self, tensor: tf.Tensor) -> tuple[tf.Tensor, Any]:
        if tensor.dtype.is_floating and tensor.dtype != tf.float16:
            return tf.cast(tensor, tf.float16), tensor.dtype
        return tensor, None

    def decompress(self, tensor: tf.Tensor, context: Any) -> tf.Tensor:
        return tensor if context is None else tf.cast(tensor, context)


class Compression:
    """The available compressors, under Horovod's names."""

    none: Compressor = NoneCompressor()
    fp16: Compressor = FP16Compressor()


def check_compression(compression: object) -> Compressor:
    """Returns ``compression`` if it is a Compressor, else raises a clear error."""
    if isinstance(compression, Compressor):
        return compression
    raise ValueError(
        f"compression must be Compression.none or Compression.fp16 (or a Compressor), "
        f"got {compression!r}."
    )


def compression_name(compression: Compressor) -> str | None:
    """``"none"`` or ``"fp16"`` for gradsync's compressors, None for any other."""
    for name in ("none", "fp16"):
        if getattr(Compression, name) is compression:
            return name
    return None
