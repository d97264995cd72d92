"""gradsync: synchronous data-parallel training with local gradient aggregation.

Layers, each depending only on the ones before it:

- ``gradsync.engine``: processes, MPI and fused numpy buffers (knows nothing of TensorFlow);
- ``gradsync.tensorflow.ops``: TensorFlow tensors in and out of the engine;
- ``gradsync.tensorflow.training``: gradient aggregation, optimizers, the gradient tape;
- ``gradsync.tensorflow`` and ``gradsync.tensorflow.keras``: the public, Horovod-compatible API.
"""

__version__ = "0.1.0"
