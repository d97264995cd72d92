"""Item 8: what an elastic commit costs, against copying the same state in memory once.

One process. The state is an MLP of ``--model`` size with Adam (weights and two slots per
weight, plus the step counter) and the ``epoch`` and ``batch`` attributes. The reference copies
every model and optimizer variable once into numpy arrays allocated beforehand (the least a
copy costs); ``commit`` is ``TensorFlowKerasState.commit()``, the in-memory snapshot a
relaunch resumes from; ``numpy_reads`` reads each variable with ``.numpy()`` (fresh arrays),
for comparison.
"""

from __future__ import annotations

import common  # noqa: I001 - pins threads before TensorFlow loads
import keras
import numpy as np
import tensorflow as tf

import gradsync.tensorflow as gs
from gradsync.tensorflow.elastic import TensorFlowKerasState


def measure(model_name: str, repeats: int) -> dict:
    sizes = common.layer_sizes(model_name)
    model = keras.Sequential(
        [keras.Input((sizes[0],))] + [keras.layers.Dense(n) for n in sizes[1:]]
    )
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    state = TensorFlowKerasState(model, optimizer, epoch=0, batch=0)
    variables = list(model.variables) + list(optimizer.variables)

    buffers = [np.empty(v.shape, np.dtype(v.dtype)) for v in variables]

    def copy_once():
        for buffer, variable in zip(buffers, variables, strict=True):
            np.copyto(buffer, tf.convert_to_tensor(variable))

    cases = {
        "copy_once": copy_once,
        "commit": state.commit,
        "numpy_reads": lambda: [v.numpy() for v in variables],
    }
    times = common.interleaved(cases, repeats, 5)
    nbytes = sum(v.numpy().nbytes for v in variables)
    return {
        "model": model_name,
        "state_mb": nbytes / common.MB,
        "seconds": {name: common.summary(values) for name, values in times.items()},
        "commit_over_copy": common.ratios(times["commit"], times["copy_once"]),
    }


def main() -> None:
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--models", nargs="+", default=["10M"])
    args = parser.parse_args()
    common.pin_threads()
    gs.init()
    common.write_result(args.out, {"models": [measure(m, args.repeats) for m in args.models]})


if __name__ == "__main__":
    main()
