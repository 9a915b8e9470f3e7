"""What run_fn leaves beside the model: history.json and training_curves.png
in the model run folder, and the provenance of the features the model reads
in <SavedModel>/assets.extra/ (the Resolver compares it, pipeline/baseline.py).
"""

import io
import json
import os
from typing import Dict, List

from absl import logging
import tensorflow as tf

from core import extractors


def write_provenance(export_dir: str, features_cfg) -> None:
  extra_dir = os.path.join(export_dir, "assets.extra")
  tf.io.gfile.makedirs(extra_dir)
  with tf.io.gfile.GFile(os.path.join(extra_dir, extractors.PROVENANCE_FILE),
                         "w") as f:
    json.dump(extractors.provenance(
        features_cfg.extractor, features_cfg.weights, features_cfg.dtype,
        features_cfg.alpha, features_cfg.patch_image_size,
        features_cfg.patch_size), f, indent=1, sort_keys=True)


def write_history(history: Dict[str, List[float]], model_run_dir: str) -> None:
  """history.json and training_curves.png of every epoch, across resumes."""
  with tf.io.gfile.GFile(os.path.join(model_run_dir, "history.json"),
                         "w") as f:
    json.dump(history, f, indent=1)
  save_training_curves(history,
                       os.path.join(model_run_dir, "training_curves.png"))


def write_scst_history(history: Dict[str, List[float]],
                       model_run_dir: str) -> None:
  """scst_history.json: epoch, loss, reward and baseline per SCST epoch
  (checkpointed chunk), across resumes."""
  with tf.io.gfile.GFile(os.path.join(model_run_dir, "scst_history.json"),
                         "w") as f:
    json.dump(history, f, indent=1)


def save_training_curves(history: Dict[str, List[float]], path: str) -> None:
  """Loss and masked accuracy per epoch, train and validation, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(1, 2, figsize=(10, 4))
  for axis, metric in zip(axes, ("loss", "masked_accuracy")):
    for prefix, style in (("", "-"), ("val_", "--")):
      values = history.get(prefix + metric)
      if values:
        epochs = history.get("epoch", list(range(1, len(values) + 1)))
        axis.plot(epochs, values, style, marker="o",
                  label=(prefix or "train_") + metric)
    axis.set_xlabel("epoch")
    axis.set_title(metric)
    axis.legend()
    axis.grid(alpha=0.3)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  plt.close(figure)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
  logging.info("training curves: %s", path)
