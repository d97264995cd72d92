"""gradsync for tf_keras (Keras 2), under Horovod's ``horovod.tensorflow.keras`` names.

The same names as ``gradsync.tensorflow.keras``, with callbacks for tf_keras models.
"""
# ruff: noqa: F401, F403, I001 - the import order below is the point

from gradsync.tensorflow.keras import *
from gradsync.tensorflow.keras import __all__

# Loads this package's callbacks over the Keras 3 ones that the star import brought in.
import gradsync.tensorflow.tf_keras.callbacks as callbacks
