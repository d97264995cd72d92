"""Item 4: TensorFlow's own way, Keras 3 under ``tf.distribute.MultiWorkerMirroredStrategy``.

Started twice by the runner, with ``TF_CONFIG`` naming two workers on 127.0.0.1. Each worker
times, taking turns: the plain local step in ``tf.function`` (the ideal, as in training.py),
and for each N

- ``keras_accumulation``: Keras's own ``SGD(gradient_accumulation_steps=N)`` with
  ``strategy.run`` in ``tf.function``; where TensorFlow refuses it, the error is recorded and
  the same optimizer is timed eagerly (``keras_accumulation_eager``), the form that runs;
- ``hand_written``: accumulation written by hand in two ``tf.function``s (accumulate, and
  add-then-apply, whose ``apply_gradients`` all-reduces), chosen in Python.
"""

from __future__ import annotations

import json
import os

import common  # noqa: I001 - pins threads before TensorFlow loads
import keras
import tensorflow as tf
from training import LEARNING_RATE, data


def build_model(model_name: str):
    sizes = common.layer_sizes(model_name)
    return keras.Sequential(
        [keras.Input((sizes[0],))]
        + [keras.layers.Dense(s, activation="relu") for s in sizes[1:-1]]
        + [keras.layers.Dense(sizes[-1])]
    )


class Worker:
    def __init__(self, strategy, model_name: str, rank: int) -> None:
        self.strategy = strategy
        self.model_name = model_name
        self.x, self.y = data(rank)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        with strategy.scope():
            self.model = build_model(model_name)

    def gradients(self, model):
        with tf.GradientTape() as tape:
            loss = self.loss_fn(self.y, model(self.x, training=True))
            loss = loss / self.strategy.num_replicas_in_sync
        return tape.gradient(loss, model.trainable_variables)

    def plain_step(self):
        model = build_model(self.model_name)
        optimizer = keras.optimizers.SGD(LEARNING_RATE)

        @tf.function
        def step():
            optimizer.apply(self.gradients(model), model.trainable_variables)

        return step

    def keras_accumulation(self, n: int, eager: bool = False):
        variables = self.model.trainable_variables
        with self.strategy.scope():
            optimizer = keras.optimizers.SGD(
                LEARNING_RATE, gradient_accumulation_steps=n if n > 1 else None
            )
            optimizer.build(variables)

        def replica_step():
            optimizer.apply_gradients(zip(self.gradients(self.model), variables, strict=True))

        def step():
            self.strategy.run(replica_step)

        return step if eager else tf.function(step)

    def hand_written(self, n: int):
        variables = self.model.trainable_variables
        with self.strategy.scope():
            optimizer = keras.optimizers.SGD(LEARNING_RATE)
            optimizer.build(variables)
        sums = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]

        @tf.function
        def accumulate():
            def replica():
                for total, g in zip(sums, self.gradients(self.model), strict=True):
                    total.assign_add(g)

            self.strategy.run(replica)

        @tf.function
        def apply():
            def replica():
                grads = [
                    (total + g) / n
                    for total, g in zip(sums, self.gradients(self.model), strict=True)
                ]
                optimizer.apply_gradients(zip(grads, variables, strict=True))
                for total in sums:
                    total.assign(tf.zeros_like(total))

            self.strategy.run(replica)

        state = {"calls": 0}

        def step():
            state["calls"] += 1
            if state["calls"] % n:
                accumulate()
            else:
                apply()

        return step


def main() -> None:
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--model", choices=sorted(common.MODELS), default="10M")
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--micro-steps", type=int, default=8)
    args = parser.parse_args()
    common.pin_threads()
    rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    worker = Worker(strategy, args.model, rank)

    @tf.function
    def barrier_reduce():
        return strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)

    steps = {"plain": worker.plain_step()}
    errors = {}
    for n in args.ns:
        step = worker.keras_accumulation(n)
        try:
            step()
        except Exception as error:  # noqa: BLE001 - TensorFlow's refusal is a result
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            said = next((line for line in lines if "merge_call" in line), lines[-1])
            errors[f"keras_accumulation N={n}"] = f"{type(error).__name__}: {said[:300]}"
            step = worker.keras_accumulation(n, eager=True)
            steps[f"keras_accumulation_eager/{n}"] = step
        else:
            steps[f"keras_accumulation/{n}"] = step
        if n > 1:
            steps[f"hand_written/{n}"] = worker.hand_written(n)
    windows = {name: int(name.split("/")[1]) if "/" in name else 1 for name in steps}
    per_window = {k: max(1, args.micro_steps // w) * w for k, w in windows.items()}
    times = common.interleaved(
        steps, args.repeats, per_window, sync=barrier_reduce, warmup=2 * max(args.ns)
    )
    samples = common.MICRO_BATCH * strategy.num_replicas_in_sync
    rates = {name: [samples / t for t in values] for name, values in times.items()}
    result = {
        "model": args.model,
        "parameters": common.parameter_count(args.model),
        "ranks": strategy.num_replicas_in_sync,
        "errors": errors,
        "samples_per_second": {name: common.summary(r) for name, r in rates.items()},
        "fraction_of_ideal": {
            name: common.ratios(r, rates["plain"]) for name, r in rates.items() if name != "plain"
        },
    }
    if rank == 0:
        common.write_result(args.out, result)


if __name__ == "__main__":
    main()
