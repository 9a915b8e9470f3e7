"""The tf.distribute strategy and precision, chosen from the hardware found.

  TF_CONFIG naming several workers   MultiWorkerMirroredStrategy
  several local GPUs                 MirroredStrategy
  otherwise (one GPU or the CPU)     the default strategy

On any GPU the Keras policy becomes mixed_float16 (TokenOutput keeps float32
logits). Vertex AI Training sets TF_CONFIG for multi-replica worker pools.
"""

import json
import os
from typing import Optional

from absl import logging
import keras
import tensorflow as tf


def _workers(tf_config: Optional[str]) -> int:
  if not tf_config:
    return 0
  cluster = json.loads(tf_config).get("cluster", {})
  return sum(len(cluster.get(role, []))
             for role in ("chief", "master", "worker"))


def choose_strategy(tf_config: Optional[str] = None,
                    gpus: Optional[int] = None) -> tf.distribute.Strategy:
  """The strategy for this process; arguments default to what is found."""
  if tf_config is None:
    tf_config = os.environ.get("TF_CONFIG", "")
  if gpus is None:
    gpus = len(tf.config.list_physical_devices("GPU"))
  workers = _workers(tf_config)
  if workers > 1:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  elif gpus > 1:
    strategy = tf.distribute.MirroredStrategy()
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
