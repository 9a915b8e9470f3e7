"""tests/helpers/trainer_process.py with the CPU split into two logical
devices first (they must be set before TensorFlow starts), so that the
Trainer's choose_strategy picks MirroredStrategy over /cpu:0 and /cpu:1.

  python tests/helpers/mirrored_trainer.py ARGS.json

Then prints "smart bias equal: True|False": the TokenOutput bias of the
configured captioner built under that MirroredStrategy and under the
default strategy, from the same label counts.
"""

import json
import sys

import tensorflow as tf

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from core import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer import distribute  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer import standalone  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer import task  # pylint: disable=g-import-not-at-top,wrong-import-position


def _smart_bias(args, strategy):
  cfg = config_lib.from_dict(args["custom_config"])
  counts = np.arange(40) % 7
  with strategy.scope():
    captioner = task.compiled_captioner(cfg.model, cfg.training, 40,
                                        (2, 2, 8), counts)
    captioner((np.zeros((2, 2, 2, 8), "float32"), np.zeros((2, 5), "int64")))
  return captioner.output_layer.dense.bias.numpy()


def main(path):
  with open(path) as f:
    args = json.load(f)
  standalone.run_trainer(**args)
  mirrored = distribute.choose_strategy()
  assert isinstance(mirrored, tf.distribute.MirroredStrategy), mirrored
  equal = np.array_equal(_smart_bias(args, mirrored),
                         _smart_bias(args, tf.distribute.get_strategy()))
  print(f"smart bias equal: {equal}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
