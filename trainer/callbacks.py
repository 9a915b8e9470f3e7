"""What training shows while it runs and leaves behind in the model run folder.

  StepProgress          within an epoch, "Trainer: epoch 3/16 step 120/250
                        loss 3.12 (2.1 steps/s)" at most every 10 s
  SampleCaptions        each epoch, captions of a few fixed eval images at
                        temperatures 0 (greedy), 0.5 and 1.0, logged and
                        appended to sample_captions.jsonl
  HistoryLog            each epoch's logs, appended to a JSON-lines file
                        that outlives a crash (the history across resumes)
"""

import json
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, TextIO

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from core import text

TEMPERATURES = (0.0, 0.5, 1.0)


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
    self._decode = None

  def set_model(self, model):
    super().set_model(model)
    self._decode = None

  def _decoder(self):
    """model.decode as one graph for every temperature and epoch, traced on
    the first call (BENCHMARKS.md, "Training: input pipeline and Trainer
    overhead"): run eagerly, its while_loop ran op by op from Python, for
    seconds every epoch. Temperature and seed are tensors, as in the
    export's `sample` signature; choose_token picks the same ids as with
    Python numbers. The decoders' loops are tf.while_loop already, so
    autograph has nothing to convert: without it the trace is shorter."""
    if self._decode is None:
      model = self.model
      self._decode = tf.function(
          lambda images, temperature, seed: model.decode(
              images, temperature=temperature, seed=seed),
          autograph=False,
          input_signature=[
              tf.TensorSpec(self.images.shape, tf.as_dtype(self.images.dtype)),
              tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)])
    return self._decode

  def captions(self) -> Dict[float, List[str]]:
    decode = self._decoder()
    images = tf.constant(self.images)
    out = {}
    for temperature in self.temperatures:
      ids = decode(images, tf.constant(temperature, tf.float32),
                   tf.constant(self.seed, tf.int32))
      out[temperature] = [text.ids_to_caption(row, self.vocabulary)
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


class HistoryLog(keras.callbacks.Callback):
  """Appends each epoch's logs to a JSON-lines file that outlives a crash."""

  def __init__(self, path, epochs_done):
    super().__init__()
    self.path = path
    rows = []
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # Epochs after the checkpoint will be trained again.
    self.rows = [r for r in rows if r["epoch"] <= epochs_done]
    self._write()

  def _write(self):
    with tf.io.gfile.GFile(self.path, "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in self.rows))

  def on_epoch_end(self, epoch, logs=None):
    self.rows.append({"epoch": epoch + 1,
                      **{k: float(v) for k, v in (logs or {}).items()}})
    self._write()

  def history(self):
    keys = sorted({k for r in self.rows for k in r})
    return {k: [r.get(k) for r in self.rows] for k in keys}
