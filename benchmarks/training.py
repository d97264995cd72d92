"""Items 3, 5 and 6: training throughput and peak memory of an MLP on 2 ranks.

Throughput (``--ns 1 2 4 8``): in one launch, every rank times, taking turns, the plain local
SGD step (the ideal: the same per-rank work with no communication) and the distributed step
for each N (gradsync's ``DistributedOptimizer``, or Horovod's with ``--framework horovod``),
over whole windows of N micro-batches. Samples/s count both ranks.

Memory (``--memory plain`` or ``--memory N``): one configuration per launch, a few steps, then
the peak resident memory of every rank.

``--mode function``: a Keras model and Keras SGD in ``tf.function`` (gradsync only, since
Horovod 0.28.1 has no Keras 3 support). ``--mode graph``: the same MLP in a v1 graph with
``tf.compat.v1.train.GradientDescentOptimizer`` and a Session.
"""

from __future__ import annotations

import common  # noqa: I001 - pins threads before TensorFlow loads
import numpy as np
import tensorflow as tf

LEARNING_RATE = 1e-3


def data(rank: int):
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((common.MICRO_BATCH, common.INPUT_DIM), dtype=np.float32)
    y = rng.integers(0, common.CLASSES, common.MICRO_BATCH).astype(np.int32)
    return x, y


class Framework:
    """gradsync or Horovod, behind the few calls the benchmark needs."""

    def __init__(self, name: str) -> None:
        if name == "horovod":
            import horovod.tensorflow as module
        else:
            import gradsync.tensorflow as module
        self.name, self.module = name, module
        module.init()
        self.rank, self.size = module.rank(), module.size()

    def barrier(self) -> None:
        from mpi4py import MPI

        if self.name == "horovod":
            self.module.allreduce(tf.constant(0.0), name="bench_barrier")
        else:
            MPI.COMM_WORLD.Barrier()

    def gather(self, value: float) -> list[float]:
        values = self.module.allgather(tf.constant([value], tf.float64))
        return [float(v) for v in np.asarray(values)]

    def distributed_optimizer(self, optimizer, n: int):
        extra = {} if self.name == "horovod" else {"count_steps": "updates"}
        return self.module.DistributedOptimizer(
            optimizer, backward_passes_per_step=n, average_aggregated_gradients=True, **extra
        )


def function_steps(model_name: str, framework: Framework, configs: list):
    """``{config: step}`` for Keras in ``tf.function``; config "plain" or an N."""
    import keras

    x, y = data(framework.rank)
    model = common.mlp(model_name)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps = {}
    for config in configs:
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
        if config != "plain":
            optimizer = framework.distributed_optimizer(optimizer, config)

        @tf.function
        def step(optimizer=optimizer):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)

        steps[config] = step
    return steps


def graph_steps(model_name: str, framework: Framework, configs: list):
    """``{config: step}`` for a v1 graph run by one Session."""
    x, y = data(framework.rank)
    sizes = common.layer_sizes(model_name)
    graph = tf.Graph()
    with graph.as_default():
        rng = np.random.default_rng(0)
        weights = [
            tf.compat.v1.Variable(
                (rng.standard_normal((a, b), dtype=np.float32) / np.sqrt(a)), use_resource=True
            )
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        biases = [
            tf.compat.v1.Variable(np.zeros(b, np.float32), use_resource=True) for b in sizes[1:]
        ]
        hidden = tf.constant(x)
        for index, (w, b) in enumerate(zip(weights, biases, strict=True)):
            hidden = tf.matmul(hidden, w) + b
            if index < len(weights) - 1:
                hidden = tf.nn.relu(hidden)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.constant(y), logits=hidden)
        )
        train_ops = {}
        for config in configs:
            optimizer = tf.compat.v1.train.GradientDescentOptimizer(LEARNING_RATE)
            if config != "plain":
                optimizer = framework.distributed_optimizer(optimizer, config)
            train_ops[config] = optimizer.minimize(loss)
        session = tf.compat.v1.Session(graph=graph, config=common.session_config())
        session.run(tf.compat.v1.global_variables_initializer())
        session.run(tf.compat.v1.local_variables_initializer())
    return {config: (lambda op=op: session.run(op)) for config, op in train_ops.items()}


def throughput(args, framework: Framework) -> dict:
    build = function_steps if args.mode == "function" else graph_steps
    configs = ["plain", *args.ns]
    steps = build(args.model, framework, configs)
    windows = {c: (1 if c == "plain" else c) for c in configs}
    per_window = {c: max(1, args.micro_steps // windows[c]) * windows[c] for c in configs}
    times = common.interleaved(
        steps, args.repeats, per_window, sync=framework.barrier, warmup=2 * max(args.ns)
    )
    samples = common.MICRO_BATCH * framework.size
    rates = {c: [samples / t for t in times[c]] for c in configs}
    return {
        "plain_step_seconds": common.summary(times["plain"]),
        "samples_per_second": {str(c): common.summary(r) for c, r in rates.items()},
        "fraction_of_ideal": {str(n): common.ratios(rates[n], rates["plain"]) for n in args.ns},
    }


def memory(args, framework: Framework) -> dict:
    config = "plain" if args.memory == "plain" else int(args.memory)
    build = function_steps if args.mode == "function" else graph_steps
    step = build(args.model, framework, [config])[config]
    for _ in range(3 * (1 if config == "plain" else config)):
        step()
    framework.barrier()
    return {"config": args.memory, "peak_rss_bytes": framework.gather(common.peak_rss_bytes())}


def main() -> None:
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--model", choices=sorted(common.MODELS), default="10M")
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--mode", choices=["function", "graph"], default="function")
    parser.add_argument("--framework", choices=["gradsync", "horovod"], default="gradsync")
    parser.add_argument("--micro-steps", type=int, default=16, help="micro-steps per window")
    parser.add_argument("--memory", help="'plain' or an N: measure peak memory instead")
    args = parser.parse_args()
    common.pin_threads()
    framework = Framework(args.framework)
    result = memory(args, framework) if args.memory else throughput(args, framework)
    result.update(
        model=args.model,
        parameters=common.parameter_count(args.model),
        mode=args.mode,
        framework=args.framework,
        ranks=framework.size,
        tensorflow=tf.__version__,
    )
    if framework.rank == 0:
        common.write_result(args.out, result)


if __name__ == "__main__":
    main()
