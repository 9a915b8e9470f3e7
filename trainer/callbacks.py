"""What training shows while it runs and leaves behind in the model run folder.

  SampleCaptions        each epoch, captions of a few fixed eval images at
                        temperatures 0 (greedy), 0.5 and 1.0, logged and
                        appended to sample_captions.jsonl
  save_training_curves  loss and masked accuracy per epoch -> PNG
"""

import io
import json
import os
from typing import Dict, List, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from captioner import text

TEMPERATURES = (0.0, 0.5, 1.0)


def read_vocabulary(path: str) -> List[str]:
  with tf.io.gfile.GFile(path) as f:
    return [line.rstrip("\n") for line in f]


def ids_to_caption(ids: Sequence[int], vocabulary: Sequence[str]) -> str:
  """Token ids -> words up to the first [END], special tokens dropped."""
  words = []
  for i in ids:
    if i == text.END_ID:
      break
    if i > text.END_ID:
      words.append(vocabulary[i] if i < len(vocabulary) else text.UNK)
  return " ".join(words)


class SampleCaptions(keras.callbacks.Callback):
  """Logs captions of fixed images at several temperatures after each epoch."""

  def __init__(self, images: np.ndarray, references: List[List[str]],
               vocabulary: Sequence[str], out_path: str, seed: int = 0,
               temperatures: Sequence[float] = TEMPERATURES):
    super().__init__()
    self.images = images              # (n, h, w, c)
    self.references = references
    self.vocabulary = vocabulary
    self.out_path = out_path
    self.seed = seed
    self.temperatures = temperatures

  def captions(self) -> Dict[float, List[str]]:
    out = {}
    for temperature in self.temperatures:
      ids = self.model.decode(tf.constant(self.images),
                              temperature=temperature, seed=self.seed)
      out[temperature] = [ids_to_caption(row, self.vocabulary)
                          for row in ids.numpy()]
    return out

  def on_epoch_end(self, epoch, logs=None):
    captions = self.captions()
    for i, reference in enumerate(self.references):
      logging.info("epoch %d, image %d (reference: %s)", epoch + 1, i,
                   reference[0] if reference else "")
      for temperature, texts in captions.items():
        logging.info("  temperature %.1f: %s", temperature, texts[i])
    with tf.io.gfile.GFile(self.out_path, "a") as f:
      f.write(json.dumps({"epoch": epoch + 1, "captions": {
          str(t): texts for t, texts in captions.items()}}) + "\n")


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


def checkpoint_epochs(backup_dir: str) -> int:
  """Epochs already done according to Keras' BackupAndRestore files (0 if none)."""
  metadata = os.path.join(backup_dir, "training_metadata.json")
  if not tf.io.gfile.exists(metadata):
    return 0
  with tf.io.gfile.GFile(metadata) as f:
    # Keras writes the number of epochs completed.
    return int(json.load(f).get("epoch", 0))
