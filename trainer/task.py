"""The Trainer's run_fn: train the captioner and export the serving model.

`fn_args.custom_config` carries the `model`, `training` and `features`
sections of the pipeline config (configs/*.yaml), so hyperparameters live in
one place.

Training survives interruption: Keras' BackupAndRestore writes the weights,
the optimizer state and the epoch count after every epoch to a folder keyed
by the Trainer's inputs (`backup_key`), outside the execution's own folders,
so a rerun of the Trainer on the same inputs (a retried task, a rerun
pipeline) continues after the last completed epoch. The folder is removed
when training ends.

Left in the model run folder: TensorBoard logs (`logs/`), `history.json`
and `training_curves.png` (every epoch, across resumes), and
`sample_captions.jsonl` (fixed eval images at temperatures 0, 0.5, 1).
"""

import dataclasses
import hashlib
import json
import math
import os
import tempfile

from absl import logging
import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from captioner import config as config_lib
from components import extractors
from trainer import callbacks as callbacks_lib
from trainer import data
from trainer import distribute
from trainer import export
from trainer import models
from trainer.models import losses
from trainer import preprocessing

# What the trained weights depend on (the backup key hashes these, and the
# fingerprint of the trainer's code when the pipeline passes one) ...
SECTIONS = ("model", "training", "features")
# ... and what only the export reads (evaluation.beam_width).
EXPORT_SECTIONS = ("evaluation", "serving")


def _sections(custom_config):
  """The config sections as typed dataclasses (unknown keys rejected)."""
  full = config_lib.from_dict({k: custom_config[k]
                               for k in SECTIONS + EXPORT_SECTIONS
                               if k in custom_config})
  return full.model, full.training, full.features, full.evaluation, (
      full.serving)


def learning_rate(train_cfg):
  """A float, or a schedule over the run's steps (see TrainingConfig)."""
  if train_cfg.lr_schedule == "constant":
    return train_cfg.learning_rate
  if train_cfg.lr_schedule == "warmup_cosine":
    total = train_cfg.epochs * train_cfg.steps_per_epoch
    warmup = min(train_cfg.warmup_steps, total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=train_cfg.learning_rate,
        warmup_steps=warmup, decay_steps=max(total - warmup, 1))
  raise ValueError(f"unknown training.lr_schedule {train_cfg.lr_schedule!r}; "
                   "choose constant or warmup_cosine")


def epochs_over_the_data(train_cfg, train_pairs, eval_pairs):
  """`steps_per_epoch: 0` / `eval_steps: 0` made one pass over the training
  / eval caption pairs, so one config fits a dataset of any size."""
  steps = train_cfg.steps_per_epoch or max(
      1, math.ceil(train_pairs / train_cfg.batch_size))
  eval_steps = train_cfg.eval_steps or max(
      1, math.ceil(eval_pairs() / train_cfg.batch_size))
  if (steps, eval_steps) != (train_cfg.steps_per_epoch, train_cfg.eval_steps):
    print(f"Trainer: {train_pairs} training pairs; epochs of {steps} steps "
          f"of {train_cfg.batch_size}, {eval_steps} eval steps", flush=True)
  return dataclasses.replace(train_cfg, steps_per_epoch=steps,
                             eval_steps=eval_steps)


def compiled_captioner(model_cfg, train_cfg, vocab_size, grid, label_counts):
  """The configured captioner, compiled with the loss, metric and optimizer."""
  captioner = models.build_captioner(model_cfg, vocab_size, grid,
                                     label_counts=label_counts)
  captioner.compile(
      optimizer=keras.optimizers.Adam(learning_rate(train_cfg)),
      loss=losses.masked_loss, metrics=[losses.masked_accuracy])
  return captioner


def backup_key(custom_config, vocab_path, train_files) -> str:
  """Same config, vocabulary and training files (names and sizes) -> same key.

  Content, not artifact URIs: a rerun pipeline writes its (deterministic)
  upstream artifacts to new folders, and should still resume.
  """
  digest = hashlib.sha256()
  digest.update(json.dumps({k: custom_config.get(k) for k in
                            SECTIONS + (config_lib.CODE_FINGERPRINT_KEY,)},
                           sort_keys=True).encode())
  with tf.io.gfile.GFile(vocab_path, "rb") as f:
    digest.update(f.read())
  for pattern in train_files:
    for path in sorted(tf.io.gfile.glob(pattern)):
      digest.update(f"{os.path.basename(path)}:"
                    f"{tf.io.gfile.stat(path).length}".encode())
  return digest.hexdigest()[:16]


def _is_chief(strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and (
      not has_chief)


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


def _sample_images(dataset, count, vocabulary):
  """The first `count` distinct images of a pairs dataset and their captions."""
  (images, _), labels = next(iter(dataset))
  images, labels = images.numpy(), labels.numpy()
  picked, references = [], []
  for i in range(len(images)):
    if not picked or not np.array_equal(images[i], images[picked[-1]]):
      if len(picked) == count:
        break
      picked.append(i)
      references.append([])
    references[-1].append(callbacks_lib.ids_to_caption(labels[i], vocabulary))
  return images[picked], references


def run_fn(fn_args):
  model_cfg, train_cfg, features_cfg, eval_cfg, serving_cfg = _sections(
      fn_args.custom_config)
  keras.utils.set_random_seed(train_cfg.seed)
  strategy = distribute.choose_strategy()
  distribute.set_precision()
  chief = _is_chief(strategy)

  transform_output = tft.TFTransformOutput(fn_args.transform_output)
  vocab_size = transform_output.vocabulary_size_by_name(
      preprocessing.VOCAB_NAME)
  vocab_path = transform_output.vocabulary_file_by_name(
      preprocessing.VOCAB_NAME)
  vocabulary = callbacks_lib.read_vocabulary(vocab_path)
  spec = extractors.extractor_spec(features_cfg.extractor,
                                   features_cfg.patch_image_size,
                                   features_cfg.patch_size,
                                   features_cfg.alpha)
  schema = transform_output.transformed_metadata.schema

  def pairs(files, **kwargs):
    return data.caption_pairs(files, fn_args.data_accessor, schema, spec.grid,
                              train_cfg.batch_size, model_cfg.max_length,
                              dtype=features_cfg.dtype, **kwargs)

  counts, train_pairs = data.label_statistics(
      pairs(fn_args.train_files, repeat=False), vocab_size)
  logging.info("vocabulary: %d tokens; %d label tokens in the training data",
               vocab_size, counts.sum())
  train_cfg = epochs_over_the_data(train_cfg, train_pairs, lambda: (
      data.count_pairs(pairs(fn_args.eval_files, repeat=False))))
  train_data = pairs(fn_args.train_files,
                     shuffle_buffer=train_cfg.shuffle_buffer,
                     seed=train_cfg.seed)
  with strategy.scope():
    captioner = compiled_captioner(model_cfg, train_cfg, vocab_size,
                                   spec.grid, counts)
    # BackupAndRestore needs built weights to load into.
    captioner(next(iter(train_data))[0])

  model_run_dir = fn_args.model_run_dir
  tf.io.gfile.makedirs(model_run_dir)
  backup_dir = train_cfg.backup_dir or os.path.join(
      os.path.dirname(os.path.dirname(model_run_dir.rstrip("/"))), "backup",
      backup_key(fn_args.custom_config, vocab_path, fn_args.train_files))
  if not chief:  # Every worker checkpoints; only the chief's is the real one.
    backup_dir = os.path.join(
        backup_dir, f"worker-{strategy.cluster_resolver.task_id}")
  tf.io.gfile.makedirs(os.path.dirname(backup_dir))
  epochs_done = callbacks_lib.checkpoint_epochs(backup_dir)
  if epochs_done:
    logging.info("resuming after epoch %d from the checkpoint in %s",
                 epochs_done, backup_dir)
    print(f"Trainer: resuming after epoch {epochs_done} from {backup_dir}",
          flush=True)
  history_log = HistoryLog(backup_dir + ".history.jsonl", epochs_done)

  eval_images, eval_references = _sample_images(
      pairs(fn_args.eval_files, repeat=False), train_cfg.sample_captions,
      vocabulary)
  captioner.fit(
      train_data,
      epochs=train_cfg.epochs,
      steps_per_epoch=train_cfg.steps_per_epoch,
      validation_data=pairs(fn_args.eval_files),
      validation_steps=train_cfg.eval_steps,
      callbacks=[
          # Steps within an epoch; verbose=2 prints only each epoch's end.
          callbacks_lib.StepProgress(every_seconds=10),
          keras.callbacks.EarlyStopping(
              patience=train_cfg.early_stopping_patience,
              restore_best_weights=True),
          keras.callbacks.TensorBoard(
              log_dir=os.path.join(model_run_dir, "logs")),
          callbacks_lib.SampleCaptions(
              eval_images, eval_references, vocabulary,
              os.path.join(model_run_dir, "sample_captions.jsonl"),
              seed=train_cfg.seed),
          history_log,
          # Last: the checkpoint is written once the epoch is fully logged.
          keras.callbacks.BackupAndRestore(backup_dir),
      ],
      verbose=2)
  history = history_log.history()
  tf.io.gfile.remove(history_log.path)
  extractor = extractors.build_extractor(spec, features_cfg.weights,
                                         features_cfg.patch_size)
  # Workers must still run the export's collective ops, into scratch.
  export_dir = fn_args.serving_model_dir if chief else tempfile.mkdtemp()
  export.export(export_dir, captioner, extractor, spec.image_size,
                vocab_path, model_cfg.max_length,
                max_pixels=features_cfg.max_pixels,
                feature_dtype=features_cfg.dtype,
                eval_beam_width=eval_cfg.beam_width,
                serving_beam_width=serving_cfg.beam_width)
  if not chief:
    tf.io.gfile.rmtree(export_dir)
    return
  # What the model reads: the Resolver compares it (pipeline/baseline.py).
  extra_dir = os.path.join(export_dir, "assets.extra")
  tf.io.gfile.makedirs(extra_dir)
  with tf.io.gfile.GFile(os.path.join(extra_dir, extractors.PROVENANCE_FILE),
                         "w") as f:
    json.dump(extractors.provenance(
        features_cfg.extractor, features_cfg.weights, features_cfg.dtype,
        features_cfg.alpha, features_cfg.patch_image_size,
        features_cfg.patch_size), f, indent=1, sort_keys=True)
  with tf.io.gfile.GFile(os.path.join(model_run_dir, "history.json"),
                         "w") as f:
    json.dump(history, f, indent=1)
  callbacks_lib.save_training_curves(
      history, os.path.join(model_run_dir, "training_curves.png"))
  logging.info("exported the serving model to %s", fn_args.serving_model_dir)
