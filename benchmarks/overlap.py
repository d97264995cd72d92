"""Item 9: overlap of communication with the backward pass, on a simulated link.

2 ranks, the MLP of ``--model`` size at N = 1 in ``tf.function``, Keras SGD, with
``GRADSYNC_SIMULATED_LINK`` set (10gbit,25us unless given): the communication then takes the
link's time, asleep, and can overlap the backward pass of the earlier layers when the
gradients travel in buckets. Each process has 1 intra-op thread and 2 inter-op threads (one
computes while the other waits for the link). Cases, taking turns: the plain local step
(compute), the gradients' allreduce alone (communication), and the distributed step with one
bucket and with buckets of ``--bucket-mb``; then the allreduce and the steps again with the
link off (what the link adds to the same allreduce on the engine alone is checked against the
ring model; buckets must not slow the step without it). Full overlap would take
max(compute, communication); no overlap, their sum.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADSYNC_SIMULATED_LINK", "10gbit,25us")
os.environ["BENCH_INTER_OP_THREADS"] = "2"

import common  # noqa: E402, I001 - pins threads before TensorFlow loads
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import gradsync.tensorflow as gs  # noqa: E402
from gradsync import engine  # noqa: E402
from gradsync.engine import link  # noqa: E402
from training import data  # noqa: E402


def without_link(case):
    """``case`` run with the simulated link off (on every rank alike: the cases take turns)."""

    def run():
        setting = os.environ.pop(link.VARIABLE)
        link.simulated_link.cache_clear()
        try:
            case()
        finally:
            os.environ[link.VARIABLE] = setting
            link.simulated_link.cache_clear()

    return run


def measure(model_name: str, repeats: int, bucket_mb: list[float]) -> dict:
    x, y = data(gs.rank())
    model = common.mlp(model_name)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables

    def make_step(optimizer):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            optimizer.apply(tape.gradient(loss, variables), variables)

        return step

    cases = {"compute": make_step(keras.optimizers.SGD(1e-3))}
    grads = [tf.zeros_like(v) for v in variables]
    cases["communication"] = tf.function(lambda: gs.grouped_allreduce(grads))
    # The same bytes on the engine alone, where the link's added time is least blurred by
    # the noise of the rest: what the link is checked on.
    arrays = [np.zeros(v.shape, np.float32) for v in variables]
    cases["engine_communication"] = lambda: engine.allreduce(arrays, name="bench")
    configs = {"one_bucket": None, **{f"buckets_{mb:g}mb": int(mb * common.MB) for mb in bucket_mb}}
    for name, bucket_bytes in configs.items():
        optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(1e-3), bucket_bytes=bucket_bytes)
        cases[name] = make_step(optimizer)
    for name in ["communication", "engine_communication", *configs]:
        cases[f"{name}_no_link"] = without_link(cases[name])
    from mpi4py import MPI

    times = common.interleaved(cases, repeats, 4, sync=MPI.COMM_WORLD.Barrier, warmup=3)
    medians = {name: common.summary(values)["median"] for name, values in times.items()}
    compute, communication = medians["compute"], medians["communication"]
    full_overlap = max(compute, communication)
    return {
        "model": model_name,
        "link": os.environ["GRADSYNC_SIMULATED_LINK"],
        "seconds": {name: common.summary(values) for name, values in times.items()},
        # compute / step: 1.0 is no communication cost at all.
        "fraction_of_ideal": {n: compute / medians[n] for n in configs},
        # full overlap / step: 1.0 is communication entirely hidden behind compute.
        "fraction_of_full_overlap": {n: full_overlap / medians[n] for n in configs},
        "no_overlap_fraction": full_overlap / (compute + communication),
        # What the link added to the engine's allreduce, over what the ring model says it adds.
        "link_over_model": (
            medians["engine_communication"] - medians["engine_communication_no_link"]
        )
        / link.simulated_link().ring_allreduce_seconds(
            sum(v.shape.num_elements() * 4 for v in variables), gs.size()
        ),
        # Without the link, buckets against one bucket (> 1: buckets faster).
        "buckets_without_link": {
            n: medians["one_bucket_no_link"] / medians[f"{n}_no_link"] for n in configs
        },
    }


def main() -> None:
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--model", default="10M")
    parser.add_argument("--bucket-mb", type=float, nargs="+", default=[25.0, 8.0])
    args = parser.parse_args()
    common.pin_threads()
    gs.init()
    result = measure(args.model, args.repeats, args.bucket_mb)
    if gs.rank() == 0:
        common.write_result(args.out, result)


if __name__ == "__main__":
    main()
