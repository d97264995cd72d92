"""Exact accumulation in a v1 graph: ``tf.compat.v1.train`` optimizers with item-weighted
windows, N changed through the session between windows, and a flushed partial window.

The schedule of rounds is that of ``exact_worker.py``: three windows of N = 3, then N = 2
for two windows, then a partial window (rank r holds r % 2 micro-batches) flushed with
``optimizer.flush(session)``. The reference, in this process, is a plain v1 optimizer taking
one step per round on the concatenation of every rank's micro-batches with the mean loss.
Usage: out_dir
"""

import sys

import tensorflow as tf

tf.compat.v1.disable_eager_execution()

from exact_worker_data import B0, FEATURES, TOKENS, W0, concatenated, micro_batch  # noqa: E402

import gradsync.tensorflow as gs  # noqa: E402

from support import report  # noqa: E402

gs.init()
RANK, SIZE = gs.rank(), gs.size()


def rounds_of(case: int):
    passes = [3, 3, 3, 2, 2]
    rounds, index = [], 0
    for n in passes:
        rounds.append([[micro_batch(case, index + k, r) for k in range(n)] for r in range(SIZE)])
        index += n
    rounds.append([[micro_batch(case, index + k, r) for k in range(r % 2)] for r in range(SIZE)])
    return rounds


def optimizer_named(name: str):
    if name == "sgd":
        return tf.compat.v1.train.GradientDescentOptimizer(0.5)
    return tf.compat.v1.train.AdamOptimizer(0.05)


def run(case: int, optimizer_name: str, distributed: bool):
    rounds = rounds_of(case)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, TOKENS, FEATURES])
        y = tf.compat.v1.placeholder(tf.int64, [None, TOKENS])
        mask = tf.compat.v1.placeholder(tf.float32, [None, TOKENS])
        w = tf.compat.v1.Variable(W0, use_resource=True)
        b = tf.compat.v1.Variable(B0, use_resource=True)
        logits = tf.einsum("ntf,fc->ntc", x, w) + b
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        summed = tf.reduce_sum(losses * mask)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        optimizer = optimizer_named(optimizer_name)
        if distributed:
            optimizer = gs.DistributedOptimizer(
                optimizer,
                backward_passes_per_step=3,
                average_aggregated_gradients=True,
                item_weighted=True,
                count_steps="updates",
            )
            train = optimizer.minimize(summed, global_step, items=tf.reduce_sum(mask))
        else:
            mean = summed / tf.maximum(tf.reduce_sum(mask), 1e-30)
            train = optimizer.minimize(mean, global_step)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            flushed = None
            for i, contributions in enumerate(rounds):
                if distributed:
                    if i == 3:
                        optimizer.set_backward_passes_per_step(2, session)
                    if i == len(rounds) - 1:  # the partial windows
                        for xs, ys, ms in contributions[RANK]:
                            session.run(train, {x: xs, y: ys, mask: ms})
                        flushed = optimizer.flush(session)
                        break
                    for xs, ys, ms in contributions[RANK]:
                        session.run(train, {x: xs, y: ys, mask: ms})
                else:
                    batches = [batch for per_rank in contributions for batch in per_rank]
                    if batches:
                        xs, ys, ms = concatenated(batches)
                        session.run(train, {x: xs, y: ys, mask: ms})
            weights = session.run([w, b])
            return weights, int(session.run(global_step)), flushed


results = {}
for case, name in [(11, "sgd"), (12, "adam")]:
    weights, steps, flushed = run(case, name, distributed=True)
    reference, _, _ = run(case, name, distributed=False)
    results[name] = {
        "weights": [v.tolist() for v in weights],
        "reference": [v.tolist() for v in reference],
        "global_step": steps,
        "flush_updates": flushed,
    }
report(sys.argv[1], RANK, results)
