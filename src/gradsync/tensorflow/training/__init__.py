"""The training API: gradient aggregation, the distributed optimizer and gradient tape."""

from gradsync.tensorflow.training.aggregation import (
    GradientAggregator,
    LocalGradientAggregationHelper,
    LocalGradientAggregationHelperEager,
)
from gradsync.tensorflow.training.hooks import BroadcastGlobalVariablesHook
from gradsync.tensorflow.training.optimizer import DistributedOptimizer
from gradsync.tensorflow.training.tape import DistributedGradientTape

__all__ = [
    "BroadcastGlobalVariablesHook",
    "DistributedGradientTape",
    "DistributedOptimizer",
    "GradientAggregator",
    "LocalGradientAggregationHelper",
    "LocalGradientAggregationHelperEager",
]
