"""Local variables (never reduced), partial models and process sets in the training API, in
eager mode and in tf.function; reports what the test compares with numpy."""

import sys

import keras
import numpy as np
import tensorflow as tf

import gradsync.tensorflow as gs
import gradsync.tensorflow.keras as gsk

from support import report

out_dir = sys.argv[1]
members = gs.ProcessSet([0, 2])
gs.init(process_sets=[members])
rank, size = gs.rank(), gs.size()
results = {}

# PartialDistributedGradientTape: the second layer is local.
keras.utils.set_random_seed(0)  # the same model on every rank
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
x = tf.constant(np.random.default_rng(rank).normal(size=(4, 3)), tf.float32)


def loss_fn():
    return tf.reduce_sum(model(x) ** 2)


for mode in ["eager", "function"]:

    def step():
        with tf.GradientTape() as plain:
            loss = loss_fn()
        own = plain.gradient(loss, model.trainable_variables)
        with tf.GradientTape() as tape:
            loss = loss_fn()
        tape = gs.PartialDistributedGradientTape(tape, local_layers=[model.layers[1]])
        synced = tape.gradient(loss, model.trainable_variables)
        return own, synced

    own, synced = tf.function(step)() if mode == "function" else step()
    results[f"tape_{mode}_own"] = [g.numpy().tolist() for g in own]
    results[f"tape_{mode}_synced"] = [g.numpy().tolist() for g in synced]

with tf.GradientTape() as tape:
    loss = loss_fn()
tape = gs.PartialDistributedGradientTape(tape, local_layers=model.layers[1])
local_pairs, global_pairs = tape.get_local_and_global_gradients(loss, model.trainable_variables)
results["split"] = [len(local_pairs), len(global_pairs)]

# Keras PartialDistributedOptimizer with aggregation over 2 calls, SGD with rate 1.
shared = tf.Variable([1.0, 1.0])
local = tf.Variable([5.0])
optimizer = gsk.PartialDistributedOptimizer(
    keras.optimizers.SGD(1.0), backward_passes_per_step=2, local_layers=[]
)
optimizer.register_local_var(local)
for _ in range(2):
    optimizer.apply_gradients(
        [(tf.constant([1.0, 2.0]) * (rank + 1), shared), (tf.constant([3.0]) * (rank + 1), local)]
    )
results["optimizer_shared"] = shared.numpy().tolist()
results["optimizer_local"] = local.numpy().tolist()
# Variables registered as local are left alone by broadcasts.
local.assign([float(rank)])
gs.broadcast_variables([shared, local], root_rank=size - 1)
results["broadcast_local"] = local.numpy().tolist()

# A DistributedOptimizer reducing over a process set: its members only.
if members.included():
    weight = tf.Variable([0.0])
    member_optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(1.0), process_set=members)
    member_optimizer.apply_gradients([(tf.constant([float(rank)]), weight)])
    results["process_set_weight"] = weight.numpy().tolist()

report(out_dir, rank, results)
