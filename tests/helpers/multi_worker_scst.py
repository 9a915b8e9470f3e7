"""One worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG) running
two SCST steps of a tiny captioner through scst.scst_trainer, the wrapper
run_fn's SCST phase fits.

  python tests/helpers/multi_worker_scst.py OUT.json

Writes to OUT.json the fit's history and the captioner's weights digest
before and after (distribute.weights_digest).
"""

import json
import sys

import keras
import numpy as np
import tensorflow as tf

from core import config as config_lib
from trainer import distribute
from trainer import scst
from trainer.models import transformer

GRID = (2, 2, 8)


class _Reward:
  """A reward that needs no vocabulary: longer captions score higher."""

  @staticmethod
  def scores(caption_ids, reference_ids):
    del reference_ids
    return (caption_ids != 0).sum(axis=1).astype(np.float32)


def main(out_path):
  strategy = distribute.choose_strategy()
  assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
  keras.utils.set_random_seed(3)
  images = tf.random.stateless_normal((4, *GRID), seed=(1, 2))
  references = np.full((4, 2, 8), 5, np.int64)
  train_cfg = config_lib.TrainingConfig(scst_steps=2, scst_samples=2,
                                        scst_learning_rate=1e-2)
  with strategy.scope():
    captioner = transformer.Captioner(16, GRID, num_layers=1, units=16,
                                      num_heads=1, dropout_rate=0.0,
                                      max_length=8)
    captioner((images, tf.zeros((4, 7), tf.int64)))
    trainer = scst.scst_trainer(captioner, _Reward(), train_cfg)
  before = distribute.weights_digest(captioner)
  dataset = tf.data.Dataset.from_tensors((images, references)).repeat()
  history = trainer.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
  with open(out_path, "w") as f:
    json.dump({"history": {k: [float(x) for x in v]
                           for k, v in history.history.items()},
               "iterations": int(keras.ops.convert_to_numpy(
                   trainer.optimizer.iterations)),
               "before": before,
               "after": distribute.weights_digest(captioner)}, f)


if __name__ == "__main__":
  main(sys.argv[1])
