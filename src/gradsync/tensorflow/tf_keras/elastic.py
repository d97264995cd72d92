"""Elastic training with Keras, under Horovod's names, for tf_keras (Keras 2): ``run``,
``KerasState``, ``CommitStateCallback``, ``UpdateBatchStateCallback``,
``UpdateEpochStateCallback`` and the rest of ``gradsync.tensorflow.elastic``."""

from gradsync.tensorflow.training.keras.elastic_callbacks import elastic_api
from gradsync.tensorflow.training.keras.flavors import TF_KERAS

globals().update(vars(elastic_api(TF_KERAS)))
__all__ = sorted(vars(elastic_api(TF_KERAS)))
