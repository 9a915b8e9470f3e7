"""The tf.distribute strategy and precision, chosen from the hardware found.

  TF_CONFIG naming several workers   MultiWorkerMirroredStrategy
  several local GPUs                 MirroredStrategy
  the CPU split into several logical MirroredStrategy over them
    devices (set_logical_device_configuration before TF starts; how
    the tests run MirroredStrategy without GPUs)
  otherwise (one GPU or the CPU)     the default strategy

On any GPU the Keras policy becomes mixed_float16 (TokenOutput keeps float32
logits). Vertex AI Training sets TF_CONFIG for multi-replica worker pools.
"""

import hashlib
import json
import os
from typing import Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf


def _workers(tf_config: Optional[str]) -> int:
  if not tf_config:
    return 0
  cluster = json.loads(tf_config).get("cluster", {})
  return sum(len(cluster.get(role, []))
             for role in ("chief", "master", "worker"))


def _fix_keras_multi_worker_reduce() -> None:
  """Keras 3 (3.15) cannot fit under MultiWorkerMirroredStrategy: each
  train and test step's scalar metrics go through
  reduce_per_replica(..., "auto"), which on several workers calls
  strategy.reduce("MEAN", value, axis=0), and axis 0 of a scalar fails
  ("Invalid reduction dimension 0 for input with 0 dimensions";
  tensorflow/tensorflow#72388). The same mean over the replicas with
  axis=None is what Keras means; every other case is left to Keras.
  """
  from keras.src.backend.tensorflow import trainer as keras_trainer  # pylint: disable=g-import-not-at-top
  original = keras_trainer.reduce_per_replica
  if getattr(original, "fixed_for_multi_worker", False):
    return

  def reduce_per_replica(values, strategy, reduction):
    if reduction in ("auto", "mean") and (
        keras_trainer._collective_all_reduce_multi_worker(strategy)):  # pylint: disable=protected-access
      return tf.nest.map_structure(
          lambda v: strategy.reduce("MEAN", v, axis=None), values)
    return original(values, strategy, reduction)

  reduce_per_replica.fixed_for_multi_worker = True
  keras_trainer.reduce_per_replica = reduce_per_replica


def choose_strategy(tf_config: Optional[str] = None,
                    gpus: Optional[int] = None,
                    cpus: Optional[int] = None) -> tf.distribute.Strategy:
  """The strategy for this process; arguments default to what is found
  (`cpus`: logical CPU devices)."""
  if tf_config is None:
    tf_config = os.environ.get("TF_CONFIG", "")
  if gpus is None:
    gpus = len(tf.config.list_physical_devices("GPU"))
  workers = _workers(tf_config)
  if workers > 1:
    _fix_keras_multi_worker_reduce()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  elif gpus > 1:
    strategy = tf.distribute.MirroredStrategy()
  elif not gpus and (cpus if cpus is not None else
                     len(tf.config.list_logical_devices("CPU"))) > 1:
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")])
  else:
    strategy = tf.distribute.get_strategy()
  logging.info("distribution: %s (%d workers in TF_CONFIG, %d GPUs), %d "
               "replicas", type(strategy).__name__, workers, gpus,
               strategy.num_replicas_in_sync)
  return strategy


def set_precision(gpus: Optional[int] = None) -> str:
  """mixed_float16 on GPUs, float32 elsewhere; returns the policy name."""
  if gpus is None:
    gpus = len(tf.config.list_physical_devices("GPU"))
  policy = "mixed_float16" if gpus else "float32"
  keras.mixed_precision.set_global_policy(policy)
  return policy


def spec_batch(element_spec):
  """Zeros with the structure, dtypes and shapes of a dataset's element,
  every unknown dimension 2 (with 1, Keras warns of a softmax over a single
  position): a batch to build from without drawing one from the dataset.
  Drawing one would fill a shuffled dataset's buffer once more and start
  an iterator, which moves the seeded shuffle's order on by one."""
  return tf.nest.map_structure(
      lambda spec: tf.zeros([2 if d is None else d for d in spec.shape],
                            spec.dtype), element_spec)


def build_for_fit(model: keras.Model, element_spec) -> None:
  """Builds `model`, its compiled loss and metrics and its optimizer for
  batches of `element_spec` ((inputs, labels), a dataset's element_spec),
  under the model's strategy, ahead of Keras' own build in fit/evaluate.

  Keras 3 (3.15) builds these under a tf.distribute strategy from the
  strategy's MEAN of the first distributed batch (_maybe_symbolic_build in
  keras/src/backend/tensorflow/trainer.py): under MirroredStrategy the int
  labels come back float64 and masked_accuracy's argmax rejects them; under
  MultiWorkerMirroredStrategy the reduce of the nested batch fails outright
  ("Attempt to convert a value (PerReplica...) to a Tensor"). The build
  reads only shapes and dtypes, which one local batch of zeros has, so
  after it the model's _maybe_symbolic_build is made a no-op. Without a
  strategy Keras does not take that path, and this only builds early.
  """
  batch = spec_batch(element_spec)
  inputs, _ = batch
  model(inputs)  # eager: the weights exist (BackupAndRestore loads into them)
  with model.distribute_strategy.scope():
    model._symbolic_build(data_batch=batch)  # pylint: disable=protected-access
  _skip_keras_build(model)


def build_optimizer_for_fit(model: keras.Model) -> None:
  """build_for_fit for a model with built weights and no compiled loss or
  metrics (scst.ScstTrainer, whose batches are not (inputs, labels)): all
  Keras' build would do is the optimizer's, here under the model's
  strategy, and Keras' build, which fails the same way under
  MultiWorkerMirroredStrategy, is skipped. (Under any strategy, with
  steps_per_epoch, Keras' build also took the first batch from the
  iterator the fit then trains on: that batch was never trained on.)
  """
  with model.distribute_strategy.scope():
    model.optimizer.build(model.trainable_variables)
  _skip_keras_build(model)


def _skip_keras_build(model: keras.Model) -> None:
  model._maybe_symbolic_build = (  # pylint: disable=protected-access
      lambda iterator=None, data_batch=None: None)


def task_name(strategy) -> str:
  """"worker 1" (TF_CONFIG's task), or "the only worker"."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return "the only worker"
  return f"{resolver.task_type} {resolver.task_id}"


def weights_digest(model: keras.Model) -> str:
  """sha256 of every weight's bytes, in the model's order: equal on every
  worker of a synchronous run (the all-reduce gives each the same
  gradients), which the Trainer prints for each worker after training."""
  digest = hashlib.sha256()
  for weight in model.weights:
    digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(
        weight)).tobytes())
  return digest.hexdigest()
