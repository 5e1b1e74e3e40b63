"""Training on one device or many with tf.distribute: the strategy, the step and the epoch loop.

    default      one device (the CPU, or the one GPU)
    mirrored     every local GPU, or the CPU split into --cpu-devices logical devices
    multiworker  MultiWorkerMirroredStrategy over the cluster that TF_CONFIG describes
    auto         multiworker when TF_CONFIG names a cluster, mirrored with several GPUs, else default

One training step serves every strategy. Each replica computes the CTC loss of its part of
the global batch, scaled by the global batch size, and the optimizer sums the replicas'
gradients before applying them (Keras 3 all-reduces inside `apply_gradients`), so a step
moves the weights as one device would on the whole batch. `model.fit` is not used: under
MultiWorkerMirroredStrategy it fails in Keras 3 (keras-team/keras issue 20585), and one loop
for every strategy means a run trains the same way on a laptop as on a cluster. Keras
callbacks (learning-rate schedule, early stopping, checkpoints, logs) run as under `fit`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from model import ctc_loss

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
GRADIENT_PACK_BYTES = 32 * 2**20


def cluster_size() -> int:
    """Tasks in the TF_CONFIG cluster (chief and workers); 0 without TF_CONFIG."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def make_strategy(name: str, cpu_devices: int | None = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy called `name` (STRATEGIES). Must run before TensorFlow
    executes anything: logical devices and collective ops are fixed when its runtime starts."""
    if cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        devices = [tf.config.LogicalDeviceConfiguration()] * cpu_devices
        tf.config.set_logical_device_configuration(cpu, devices)
    gpus = len(tf.config.list_physical_devices("GPU"))  # physical: listing logical ones starts the runtime
    if name == "auto":
        name = ("multiworker" if cluster_size() > 1 else
                "mirrored" if gpus > 1 or (cpu_devices or 0) > 1 else "default")
    if name == "multiworker":
        if not cluster_size():
            raise ValueError("--strategy multiworker needs TF_CONFIG, the cluster and this worker's "
                             "place in it (see the README)")
        # Gradients all-reduced in packs, not one collective per variable: 40% faster steps
        # for two workers on one machine here.
        packed = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=GRADIENT_PACK_BYTES)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=packed)
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU" if gpus else "CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


@dataclass(frozen=True)
class Role:
    """This process's place among the workers. The chief alone writes models, checkpoints and
    logs; every worker holds the same weights after every step."""

    index: int  # 0 for the chief
    count: int
    name: str  # "chief" or "worker-N", for lock files and messages

    @property
    def chief(self) -> bool:
        return self.index == 0


def role_of(strategy: tf.distribute.Strategy) -> Role:
    """The chief is the task of type "chief" if the cluster has one, else worker 0 (TF's rule)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return Role(0, 1, "chief")
    has_chief = "chief" in cluster
    count = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    if resolver.task_type == "chief" or (not has_chief and resolver.task_id == 0):
        return Role(0, count, "chief")
    index = resolver.task_id + int(has_chief)
    return Role(index, count, f"worker-{index}")


def prepare_model(model: keras.Model, strategy: tf.distribute.Strategy) -> keras.Model:
    """With several replicas, batch normalisation computes its statistics over the global batch
    (all replicas), as one device would, instead of over each replica's slice."""
    if strategy.num_replicas_in_sync > 1:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    return model


def distribute_dataset(strategy: tf.distribute.Strategy, global_batch: int,
                       make: Callable[[range, int], tf.data.Dataset]):
    """The training batches for every replica. `make(owned, parts)` is called once per input
    pipeline (one per worker): the dataset of the `owned` slices of each global batch cut into
    `parts`, one per replica. Raises ValueError when the batch does not split evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"--batch-size {global_batch} does not split evenly over {replicas} replicas")

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_pipeline = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * per_pipeline
        return make(range(first, first + per_pipeline), replicas)

    return strategy.distribute_datasets_from_function(dataset_fn)


class Trainer:
    """The training loop: distributed steps, the validation loss, Keras callbacks per epoch."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, global_batch: int,
                 role: Role):
        self.strategy, self.model, self.global_batch, self.role = strategy, model, global_batch, role
        self.train_step = tf.function(self._train_step)
        self.loss_sum = tf.function(lambda x, y: tf.reduce_sum(ctc_loss(y, model(x, training=False))),
                                    reduce_retracing=True)  # the last batch is smaller
        self._sum_over_workers = tf.function(self._sum_over_workers_step)

    def _train_step(self, iterator) -> tf.Tensor:
        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(ctc_loss(labels, self.model(images, training=True)),
                                                  global_batch_size=self.global_batch)
            variables = self.model.trainable_variables
            self.model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        per_replica = self.strategy.run(replica_step, args=next(iterator))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _sum_over_workers_step(self, values: tf.Tensor) -> tf.Tensor:
        # Every replica of a worker holds the worker's values: the mean over replicas times
        # the number of workers is the sum over workers.
        mean = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, self.strategy.run(lambda: values), axis=None)
        return mean * self.role.count

    def sum_over_workers(self, values: list[float]) -> np.ndarray:
        """Each worker's `values`, summed element-wise over the workers (every worker gets the sum)."""
        return self._sum_over_workers(tf.constant(values, tf.float64)).numpy()

    def check_same_epoch(self, epoch: int) -> None:
        """Raise ValueError unless every worker resumes from `epoch`: a worker that resumed from
        another epoch would wait forever for steps the others never run."""
        total, squares = self.sum_over_workers([epoch, epoch * epoch])
        if abs(squares * self.role.count - total * total) > 0.5:
            raise ValueError(f"the workers resume from different epochs ({self.role.name} from {epoch}): "
                             "every worker needs the same --out folder (a shared file system)")

    def validation_loss(self, dataset: tf.data.Dataset) -> float:
        """Mean CTC loss over every worker's share of the validation split; the same on every
        worker, so that schedules and early stopping decide alike everywhere."""
        total, count = 0.0, 0
        for images, labels in dataset:
            total += float(self.loss_sum(images, labels))
            count += int(labels.shape[0])
        total, count = self.sum_over_workers([total, count])
        return float(total / count) if count else float("inf")

    def fit(self, train_ds, val_ds: tf.data.Dataset, epochs: int, initial_epoch: int,
            steps_per_epoch: int, callbacks: list[keras.callbacks.Callback], verbose: int) -> list[int]:
        """Train epochs `initial_epoch` .. `epochs - 1` (or until a callback stops it) as
        `model.fit` would; returns the epochs run."""
        self.check_same_epoch(initial_epoch)
        hooks = keras.callbacks.CallbackList(callbacks, add_history=True, add_progbar=verbose > 0,
                                             model=self.model, verbose=verbose, epochs=epochs,
                                             steps=steps_per_epoch)
        self.model.stop_training = False
        iterator = iter(train_ds)
        done, logs = [], {}
        hooks.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            hooks.on_epoch_begin(epoch)
            total = tf.constant(0.0)  # a tensor: reading it every step would stall the pipeline
            for step in range(steps_per_epoch):
                hooks.on_train_batch_begin(step)
                total += self.train_step(iterator)
                hooks.on_train_batch_end(step, {"loss": total / (step + 1)})
            hooks.on_test_begin()
            val_loss = self.validation_loss(val_ds)
            hooks.on_test_end({"loss": val_loss})
            logs = {"loss": float(total) / steps_per_epoch, "val_loss": val_loss}
            hooks.on_epoch_end(epoch, logs)
            done.append(epoch)
            if self.model.stop_training:
                break
        hooks.on_train_end(logs)
        return done
