"""A training program run by ``gradsyncrun`` in elastic mode, with faults injected.

Linear regression on data indexed by (epoch, batch): each step's global batch is 12 samples,
split evenly among the ranks (the sharding that keeps every sample seen once per epoch
whatever the world size), SGD with windows of N micro-steps averaged. The trajectory is then
the same on any number of ranks, so a correct relaunch ends with the weights of one process
taking every step once. Faults: ``kind@generation:step:rank`` (kill, raise, hang, or
``write-kill``: that rank dies while it writes its commit when the world is next stopped).
``grow@step`` (``shrink@step``) makes rank 0 of the first world add a host to (take the last
host off) the discovery file at that step.

Usage: out_dir mode passes commit_every [fault ...]   (mode: loop | variables | fit; loop and
variables are the same loop, committing a ``KerasState`` and a ``TensorFlowState`` of the
model's and the optimizer's variables)
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import gradsync.tensorflow as gs
import gradsync.tensorflow.keras as gs_keras
from gradsync.elastic import worker

out_dir, mode = Path(sys.argv[1]), sys.argv[2]
passes, commit_every = int(sys.argv[3]), int(sys.argv[4])
faults = sys.argv[5:]
EPOCHS, BATCHES, GLOBAL, FEATURES = int(os.environ.get("EPOCHS", 3)), 6, 12, 4
STEP_SLEEP = float(os.environ.get("STEP_SLEEP", 0))  # a slower step, for the soak

gs.init()
rank, size, generation = gs.rank(), gs.size(), worker.generation()


def global_batch(epoch: int, batch: int):
    rng = np.random.default_rng([epoch, batch])
    x = rng.normal(size=(GLOBAL, FEATURES)).astype(np.float32)
    y = (x @ np.arange(1, FEATURES + 1, dtype=np.float32) + 0.5).astype(np.float32)
    return x, y[:, None]


def shard(epoch: int, batch: int):
    x, y = global_batch(epoch, batch)
    per_rank = GLOBAL // size
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    return x[part], y[part]


def inject(step: int) -> None:
    for fault in faults:
        kind, _, where = fault.partition("@")
        if kind in ("grow", "shrink"):
            if rank == 0 and generation == 0 and step == int(where):
                grow() if kind == "grow" else shrink()
            continue
        fault_generation, fault_step, fault_rank = map(int, where.split(":"))
        if (fault_generation, fault_step, fault_rank) != (generation, step, rank):
            continue
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "raise":
            raise RuntimeError("injected failure")
        elif kind == "hang":
            time.sleep(3600)
        elif kind == "write-kill":
            os.environ["GRADSYNC_ELASTIC_KILL_WHILE_WRITING"] = str(rank)


def grow() -> None:
    """Offers one more slot, and waits until the supervisor has seen it (so that the next
    commit is the one that grows the world)."""
    hosts = Path(os.environ["HOSTS_FILE"])
    hosts.write_text(hosts.read_text() + "127.0.0.9:1\n")
    deadline = time.monotonic() + 30
    while not worker.hosts_updated() and time.monotonic() < deadline:
        time.sleep(0.1)


def shrink() -> None:
    """Takes the last host off the discovery file, and waits to be stopped."""
    hosts = Path(os.environ["HOSTS_FILE"])
    hosts.write_text("".join(hosts.read_text().splitlines(keepends=True)[:-1]))
    time.sleep(60)


model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
model.layers[0].set_weights([np.zeros((FEATURES, 1), np.float32), np.zeros(1, np.float32)])
optimizer = gs.DistributedOptimizer(
    keras.optimizers.SGD(0.05),
    backward_passes_per_step=passes,
    average_aggregated_gradients=True,
    count_steps="updates",
)
loss_fn = keras.losses.MeanSquaredError()


def make_state():
    """The state the mode commits: a ``TensorFlowState`` needs the optimizer's variables to
    exist, so the optimizer is built first."""
    if mode != "variables":
        return gs_keras.elastic.KerasState(model, optimizer, epoch=0, batch=0)
    optimizer.build(model.trainable_variables)
    variables = list(model.variables) + list(optimizer.variables)
    return gs.elastic.TensorFlowState(variables, epoch=0, batch=0)


state = make_state()


def record_start() -> None:
    pids = out_dir / "pids"
    pids.mkdir(exist_ok=True)
    (pids / f"{generation}.{rank}").write_text(str(os.getpid()))
    if rank == 0:
        with open(out_dir / "history.jsonl", "a") as file:
            entry = {
                "generation": generation,
                "size": size,
                "commit": state.commit_id,
                "epoch": state.epoch,
                "batch": state.batch,
            }
            file.write(json.dumps(entry) + "\n")


@tf.function
def step(x, y):
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))


@gs_keras.elastic.run
def train_loop(state):
    record_start()
    while state.epoch < EPOCHS:
        while state.batch < BATCHES:
            step(*shard(state.epoch, state.batch))
            state.batch += 1
            inject(state.epoch * BATCHES + state.batch)
            if STEP_SLEEP:
                time.sleep(STEP_SLEEP)
                if rank == 0:
                    with open(out_dir / "steps.log", "a") as file:
                        file.write(f"{generation} {state.epoch * BATCHES + state.batch}\n")
            if state.batch % commit_every == 0:
                state.commit()
        state.batch = 0
        state.epoch += 1
        state.commit()


class Faults(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        inject(state.epoch * BATCHES + state.batch)


@gs_keras.elastic.run
def train_fit(state):
    record_start()
    callbacks = [
        gs_keras.elastic.UpdateBatchStateCallback(state),
        gs_keras.elastic.UpdateEpochStateCallback(state),
        Faults(),
        gs_keras.elastic.CommitStateCallback(state, batches_per_commit=commit_every),
    ]
    model.compile(optimizer=optimizer, loss=loss_fn)
    while state.epoch < EPOCHS:
        first = state.batch
        xs, ys = zip(*(shard(state.epoch, b) for b in range(first, BATCHES)), strict=True)
        x, y = np.concatenate(xs), np.concatenate(ys)
        model.fit(
            x, y, batch_size=GLOBAL // size, epochs=1, shuffle=False, verbose=0, callbacks=callbacks
        )


(train_fit if mode == "fit" else train_loop)(state)
if rank == 0:
    weights = [w.tolist() for w in model.get_weights()]
    (out_dir / "result.json").write_text(
        json.dumps({"weights": weights, "size": size, "generation": generation})
    )
