"""The training API: settings, gradient aggregation, optimizers, the gradient tape."""

from gradsync.tensorflow.training.aggregation import (
    GradientAggregator,
    LocalGradientAggregationHelper,
    LocalGradientAggregationHelperEager,
)
from gradsync.tensorflow.training.hooks import BroadcastGlobalVariablesHook
from gradsync.tensorflow.training.optimizer import DistributedOptimizer
from gradsync.tensorflow.training.settings import SyncSettings
from gradsync.tensorflow.training.tape import (
    DistributedGradientTape,
    PartialDistributedGradientTape,
)

__all__ = [
    "BroadcastGlobalVariablesHook",
    "DistributedGradientTape",
    "DistributedOptimizer",
    "GradientAggregator",
    "LocalGradientAggregationHelper",
    "LocalGradientAggregationHelperEager",
    "PartialDistributedGradientTape",
    "SyncSettings",
]
