"""Errors raised by the engine, identically on every rank."""


class GradsyncError(RuntimeError):
    """Base class of gradsync's runtime errors."""


class NotInitializedError(GradsyncError):
    """A collective or a query of the world was made before ``init()``."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs gradsync to be initialized: call gradsync.tensorflow.init() "
            "(or gradsync.engine.init()) once at the start of the program, on every rank."
        )


class CollectiveMismatchError(GradsyncError):
    """The ranks issued collectives that do not match (operation, name, dtype, shape, count)."""


class WorkerLostError(GradsyncError):
    """An MPI call of a collective failed: a worker of the job was most likely lost (it died,
    or its host went away). Under ``gradsyncrun``'s elastic mode the world is then relaunched
    from the last commit (Horovod's ``HorovodInternalError`` plays this part)."""
