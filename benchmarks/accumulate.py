"""Item 2: what a non-synchronizing micro-step costs, against numpy's in-place add.

One process (no communication is involved). The same bytes are accumulated by: numpy's
``np.add(acc, g, out=acc)`` on one buffer (the memory-bandwidth limit, the reference), TF's
own ``assign_add`` on ~60 variables in ``tf.function``, gradsync's ``GradientAggregator``
(counter, ``tf.cond`` and ``assign_add``, never reaching N) and a whole non-synchronizing
``apply`` of Keras's SGD wrapped by ``DistributedOptimizer``; the last two also with item
weighting (``item_weighted=True``, one more scalar added per micro-step), whose cost is given
as a ratio to the same case without it. Bandwidth counts three passes (read the accumulator
and the gradient, write the accumulator).
"""

from __future__ import annotations

import common  # noqa: I001 - pins threads before TensorFlow loads
import keras
import numpy as np
import tensorflow as tf

import gradsync.tensorflow as gs
from gradsync.tensorflow.training import SyncSettings
from gradsync.tensorflow.training.aggregation import GradientAggregator
from gradsync.tensorflow.training.reduction import make_gradient_allreducer

NEVER = 2**40  # backward_passes_per_step that no benchmark reaches: every call accumulates


def measure(total_mb: int, repeats: int) -> dict:
    arrays = common.gradient_arrays(total_mb * common.MB)
    nbytes = sum(a.nbytes for a in arrays)
    accumulator = np.zeros(nbytes // 4, dtype=np.float32)
    gradient = np.ones(nbytes // 4, dtype=np.float32)
    numpy_accumulators = [np.zeros_like(a) for a in arrays]
    gradients = [tf.Variable(a) for a in arrays]
    targets = [tf.Variable(np.zeros_like(a)) for a in arrays]

    @tf.function
    def tf_assign_add():
        for target, g in zip(targets, gradients, strict=True):
            target.assign_add(g.read_value(), read_value=False)

    def accumulate(item_weighted: bool):
        settings = SyncSettings(backward_passes_per_step=NEVER, item_weighted=item_weighted)
        aggregator = GradientAggregator(settings, make_gradient_allreducer(settings))
        items = tf.constant(32.0) if item_weighted else None
        return tf.function(
            lambda: aggregator.compute_gradients(
                [g.read_value() for g in gradients], targets, items=items
            )
        )

    def skipped_step(item_weighted: bool):
        optimizer = gs.DistributedOptimizer(
            keras.optimizers.SGD(1e-3), backward_passes_per_step=NEVER, item_weighted=item_weighted
        )
        weights = [tf.Variable(np.zeros_like(a)) for a in arrays]
        items = tf.constant(32.0) if item_weighted else None
        return tf.function(
            lambda: optimizer.apply([g.read_value() for g in gradients], weights, items=items)
        )

    def numpy_per_tensor():
        for target, g in zip(numpy_accumulators, arrays, strict=True):
            np.add(target, g, out=target)

    cases = {
        "numpy_add": lambda: np.add(accumulator, gradient, out=accumulator),
        "numpy_add_60_tensors": numpy_per_tensor,
        "tf_assign_add": tf_assign_add,
        "gradsync_accumulate": accumulate(False),
        "gradsync_accumulate_items": accumulate(True),
        "gradsync_skipped_step": skipped_step(False),
        "gradsync_skipped_step_items": skipped_step(True),
    }
    times = common.interleaved(cases, repeats, max(5, 640 // total_mb))
    reference = times["numpy_add"]
    return {
        "mb": nbytes / common.MB,
        "tensors": len(arrays),
        "seconds": {name: common.summary(values) for name, values in times.items()},
        "bandwidth_gb_s": {
            name: 3 * nbytes / 1e9 / common.summary(values)["median"]
            for name, values in times.items()
        },
        # Fraction of numpy's bandwidth: numpy's time over this case's time, per repeat.
        "fraction_of_numpy": {
            name: common.ratios(reference, values) for name, values in times.items()
        },
        # What item weighting costs: the time with it over the time without, per repeat.
        "item_weighting_cost": {
            case: common.ratios(times[f"{case}_items"], times[case])
            for case in ("gradsync_accumulate", "gradsync_skipped_step")
        },
    }


def main() -> None:
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    common.pin_threads()
    gs.init()
    results = [measure(size, args.repeats) for size in args.sizes]
    common.write_result(args.out, {"sizes": results})


if __name__ == "__main__":
    main()
