"""The engine's errors as TensorFlow programs expect them."""

from __future__ import annotations

import tensorflow as tf

from gradsync import engine


class CollectiveMismatchError(engine.CollectiveMismatchError, tf.errors.FailedPreconditionError):
    """The ranks issued collectives that do not match; a ``tf.errors.FailedPreconditionError``,
    as Horovod raises, and gradsync's ``CollectiveMismatchError``."""

    def __init__(self, message: str) -> None:
        tf.errors.FailedPreconditionError.__init__(self, None, None, message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.message,)


def as_tensorflow_error(error: BaseException) -> BaseException:
    """``error`` as the class TensorFlow programs catch (mismatches become
    ``tf.errors.FailedPreconditionError``); other errors unchanged."""
    if isinstance(error, engine.CollectiveMismatchError) and not isinstance(
        error, CollectiveMismatchError
    ):
        return CollectiveMismatchError(str(error))
    return error
