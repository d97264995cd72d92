"""``BroadcastGlobalVariablesHook``: starts every rank of a v1 training session from rank 0's
variables (Horovod's hook of the same name)."""

from __future__ import annotations

import tensorflow as tf

from gradsync.tensorflow.ops import broadcast_global_variables


class BroadcastGlobalVariablesHook(tf.compat.v1.train.SessionRunHook):
    """Broadcasts all global variables from ``root_rank`` once the session is created (and
    again after each restore). Rank-local aggregation state is left alone."""

    def __init__(self, root_rank: int = 0) -> None:
        super().__init__()
        self.root_rank = root_rank
        self._broadcast = None

    def begin(self) -> None:
        self._broadcast = broadcast_global_variables(self.root_rank)

    def after_create_session(self, session, coord) -> None:
        session.run(self._broadcast)
