"""What training shows while it runs and leaves behind in the model run folder.

  StepProgress          within an epoch, "Trainer: epoch 3/16 step 120/250
                        loss 3.12 (2.1 steps/s)" at most every 10 s
  SampleCaptions        each epoch, captions of a few fixed eval images at
                        temperatures 0 (greedy), 0.5 and 1.0, logged and
                        appended to sample_captions.jsonl
  save_training_curves  loss and masked accuracy per epoch -> PNG
"""

import io
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, TextIO

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from core import text

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


class StepProgress(keras.callbacks.Callback):
  """Prints where training is inside an epoch, at most every `every_seconds`.

  `Trainer: epoch 3/16 step 120/250 loss 3.12 (2.1 steps/s)`: the epoch and
  step numbers count from 1, the loss is Keras' running mean over the epoch
  so far, and the rate is steps since the epoch began over the time since.
  The clock restarts at every epoch, so an epoch shorter than
  `every_seconds` shows only Keras' own end-of-epoch line (verbose=2).
  """

  def __init__(self, every_seconds: float = 10.0,
               clock: Callable[[], float] = time.monotonic,
               out: Optional[TextIO] = None):
    super().__init__()
    self.every_seconds = every_seconds
    self.clock = clock
    self.out = out
    self._epoch = 0
    self._epoch_started = self._printed = clock()

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    self._epoch_started = self._printed = self.clock()

  def on_train_batch_end(self, batch, logs=None):
    now = self.clock()
    if now - self._printed < self.every_seconds:
      return
    self._printed = now
    params = self.params or {}
    step = batch + 1
    line = f"Trainer: epoch {self._epoch + 1}"
    if params.get("epochs"):
      line += f"/{params['epochs']}"
    line += f" step {step}"
    if params.get("steps"):
      line += f"/{params['steps']}"
    if logs and logs.get("loss") is not None:
      line += f" loss {float(logs['loss']):.2f}"
    line += f" ({step / max(now - self._epoch_started, 1e-9):.1f} steps/s)"
    print(line, file=self.out or sys.stdout, flush=True)


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
