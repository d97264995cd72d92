"""Elastic training with Keras, under Horovod's names, for the Keras that tf.keras is: ``run``,
``KerasState``, ``CommitStateCallback``, ``UpdateBatchStateCallback``,
``UpdateEpochStateCallback`` and the rest of ``gradsync.tensorflow.elastic``."""

from gradsync.tensorflow.training.keras.elastic_callbacks import elastic_api
from gradsync.tensorflow.training.keras.flavors import flavor_of_tf_keras

globals().update(vars(elastic_api(flavor_of_tf_keras())))
__all__ = sorted(vars(elastic_api(flavor_of_tf_keras())))
