"""Elastic training with Keras, under Horovod's names, for standalone Keras 3: ``run``,
``KerasState``, ``CommitStateCallback``, ``UpdateBatchStateCallback``,
``UpdateEpochStateCallback`` and the rest of ``gradsync.tensorflow.elastic``."""

from gradsync.tensorflow.training.keras.elastic_callbacks import elastic_api
from gradsync.tensorflow.training.keras.flavors import KERAS_3

globals().update(vars(elastic_api(KERAS_3)))
__all__ = sorted(vars(elastic_api(KERAS_3)))
