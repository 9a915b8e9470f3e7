"""The Trainer's run_fn: train the captioner and export the serving model.

`fn_args.custom_config` carries the `model`, `training` and `features`
sections of the pipeline config (configs/*.yaml), so hyperparameters live in
one place.

Training survives interruption: Keras' BackupAndRestore writes the weights,
the optimizer state and the epoch count after every epoch to a folder keyed
by the Trainer's inputs (trainer/backup.py), so a rerun of the Trainer on the
same inputs continues after the last completed epoch. The folder is removed
when training ends.

Left in the model run folder: TensorBoard logs (`logs/`), `history.json`
and `training_curves.png` (every epoch, across resumes), and
`sample_captions.jsonl` (fixed eval images at temperatures 0, 0.5, 1).

With `training.scst_steps` > 0, self-critical sequence training
(trainer/scst.py) fine-tunes the cross-entropy model before the export
(`scst_history.json`); it checkpoints and resumes the same way.
"""

import dataclasses
import math
import os
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from core import config as config_lib
from core import extractors
from core import text
from trainer import backup
from trainer import callbacks as callbacks_lib
from trainer import data
from trainer import distribute
from trainer import export
from trainer import models
from trainer import outputs
from trainer import preprocessing
from trainer import scst
from trainer.models import losses

# What only the export reads (evaluation.beam_width, serving.beam_width).
EXPORT_SECTIONS = ("evaluation", "serving")


def _sections(custom_config):
  """The config sections as typed models (unknown keys rejected)."""
  full = config_lib.from_dict({k: custom_config[k]
                               for k in backup.SECTIONS + EXPORT_SECTIONS
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
  return train_cfg.model_copy(update={"steps_per_epoch": steps,
                                     "eval_steps": eval_steps})


def compiled_captioner(model_cfg, train_cfg, vocab_size, grid, label_counts):
  """The configured captioner, compiled with the loss, metric and optimizer."""
  captioner = models.build_captioner(model_cfg, vocab_size, grid,
                                     label_counts=label_counts)
  captioner.compile(
      optimizer=keras.optimizers.Adam(learning_rate(train_cfg)),
      loss=losses.masked_loss, metrics=[losses.masked_accuracy])
  return captioner


def _is_chief(strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and (
      not has_chief)


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
    references[-1].append(text.ids_to_caption(labels[i], vocabulary))
  return images[picked], references


@dataclasses.dataclass(frozen=True)
class TrainerInputs:
  """What the Transform graph and the config give training: the vocabulary,
  the feature grid, and `pairs(files, ...)` caption-pair datasets."""
  fn_args: object
  model_cfg: config_lib.ModelConfig
  train_cfg: config_lib.TrainingConfig
  features_cfg: config_lib.FeaturesConfig
  vocab_size: int
  vocab_path: str
  spec: extractors.ExtractorSpec
  schema: object  # of the transformed examples

  @classmethod
  def read(cls, fn_args, model_cfg, train_cfg, features_cfg):
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    return cls(
        fn_args, model_cfg, train_cfg, features_cfg,
        transform_output.vocabulary_size_by_name(preprocessing.VOCAB_NAME),
        transform_output.vocabulary_file_by_name(preprocessing.VOCAB_NAME),
        extractors.extractor_spec(features_cfg.extractor,
                                  features_cfg.patch_image_size,
                                  features_cfg.patch_size,
                                  features_cfg.alpha),
        transform_output.transformed_metadata.schema)

  def pairs(self, files, **kwargs):
    return data.caption_pairs(files, self.fn_args.data_accessor, self.schema,
                              self.spec.grid, self.train_cfg.batch_size,
                              self.model_cfg.max_length,
                              dtype=self.features_cfg.dtype, **kwargs)

  def labels(self, files):
    """The label batches of `pairs(files, repeat=False)`, images unread."""
    return data.caption_labels(files, self.fn_args.data_accessor, self.schema,
                               self.train_cfg.batch_size,
                               self.model_cfg.max_length)


def _sized_training(inputs):
  """The label counts (for the smart bias) and the training config with
  epochs of one pass when `steps_per_epoch` / `eval_steps` are 0."""
  fn_args = inputs.fn_args
  counts, train_pairs = data.label_statistics(
      inputs.labels(fn_args.train_files), inputs.vocab_size)
  logging.info("vocabulary: %d tokens; %d label tokens in the training data",
               inputs.vocab_size, counts.sum())
  train_cfg = epochs_over_the_data(inputs.train_cfg, train_pairs, lambda: (
      data.count_pairs(inputs.labels(fn_args.eval_files))))
  return counts, train_cfg


def _resume_point(inputs):
  """The backup folder (the chief's, for every worker) and the epochs it
  already holds (said when > 0)."""
  backup_dir = backup.backup_dir(inputs.fn_args, inputs.train_cfg,
                                 inputs.vocab_path)
  epochs_done = backup.checkpoint_epochs(backup_dir)
  if epochs_done:
    logging.info("resuming after epoch %d from the checkpoint in %s",
                 epochs_done, backup_dir)
    print(f"Trainer: resuming after epoch {epochs_done} from {backup_dir}",
          flush=True)
  return backup_dir, epochs_done


def _fit(captioner, inputs, train_cfg, train_data, backup_dir, epochs_done,
         run_dir, chief=True):
  """Keras fit with progress, early stopping, TensorBoard, sample captions
  and BackupAndRestore; returns the history of every epoch, across
  resumes. `run_dir`: where TensorBoard logs and sample captions go (a
  non-chief worker's scratch)."""
  fn_args = inputs.fn_args
  vocabulary = text.read_vocabulary(inputs.vocab_path)
  history_log = callbacks_lib.HistoryLog(
      backup_dir + ".history.jsonl" if chief else
      os.path.join(run_dir, "history.jsonl"), epochs_done)
  eval_images, eval_references = _sample_images(
      inputs.pairs(fn_args.eval_files, repeat=False),
      train_cfg.sample_captions, vocabulary)
  captioner.fit(
      train_data,
      epochs=train_cfg.epochs,
      steps_per_epoch=train_cfg.steps_per_epoch,
      validation_data=inputs.pairs(fn_args.eval_files),
      validation_steps=train_cfg.eval_steps,
      callbacks=[
          # Steps within an epoch; verbose=2 prints only each epoch's end.
          callbacks_lib.StepProgress(every_seconds=10),
          keras.callbacks.EarlyStopping(
              patience=train_cfg.early_stopping_patience,
              restore_best_weights=True),
          keras.callbacks.TensorBoard(
              log_dir=os.path.join(run_dir, "logs")),
          callbacks_lib.SampleCaptions(
              eval_images, eval_references, vocabulary,
              os.path.join(run_dir, "sample_captions.jsonl"),
              seed=train_cfg.seed),
          history_log,
          # Last: the checkpoint is written once the epoch is fully logged.
          backup.WorkerBackupAndRestore(backup_dir, chief),
      ],
      verbose=2)
  history = history_log.history()
  tf.io.gfile.remove(history_log.path)
  return history


def _export(captioner, inputs, eval_cfg, serving_cfg, export_dir):
  """The serving SavedModel (trainer/export.py), with the extractor built
  from the configured weights."""
  features_cfg = inputs.features_cfg
  extractor = extractors.build_extractor(inputs.spec, features_cfg.weights,
                                         features_cfg.patch_size)
  export.export(export_dir, captioner, extractor, inputs.spec.image_size,
                inputs.vocab_path, inputs.model_cfg.max_length,
                max_pixels=features_cfg.max_pixels,
                feature_dtype=features_cfg.dtype,
                eval_beam_width=eval_cfg.beam_width,
                serving_beam_width=serving_cfg.beam_width)


def _wait_for_the_chiefs_export(serving_model_dir, timeout_seconds=600):
  """TFX's Trainer executor fails in every process whose serving_model_dir
  does not exist after run_fn ("run_fn failed to generate model"), and only
  the chief writes it: a worker returns once the chief's SavedModel is there
  (the chief exports right after the collective ops both ran)."""
  saved_model = os.path.join(serving_model_dir, "saved_model.pb")
  deadline = time.monotonic() + timeout_seconds
  while not tf.io.gfile.exists(saved_model):
    if time.monotonic() > deadline:
      raise RuntimeError(f"the chief wrote no model to {serving_model_dir} "
                         f"within {timeout_seconds} s")
    time.sleep(1)


def run_fn(fn_args):
  """TFX Trainer entry point (module_path trainer.task)."""
  model_cfg, train_cfg, features_cfg, eval_cfg, serving_cfg = _sections(
      fn_args.custom_config)
  keras.utils.set_random_seed(train_cfg.seed)
  strategy = distribute.choose_strategy()
  distribute.set_precision()
  chief = _is_chief(strategy)
  print(f"Trainer: {type(strategy).__name__}, global batch "
        f"{train_cfg.batch_size} over {strategy.num_replicas_in_sync} "
        f"replicas", flush=True)

  inputs = TrainerInputs.read(fn_args, model_cfg, train_cfg, features_cfg)
  counts, train_cfg = _sized_training(inputs)
  train_data = inputs.pairs(fn_args.train_files,
                            shuffle_buffer=train_cfg.shuffle_buffer,
                            seed=train_cfg.seed)
  with strategy.scope():
    captioner = compiled_captioner(model_cfg, train_cfg, inputs.vocab_size,
                                   inputs.spec.grid, counts)
    # BackupAndRestore needs built weights to load into.
    distribute.build_for_fit(captioner, train_data.element_spec)

  tf.io.gfile.makedirs(fn_args.model_run_dir)
  backup_dir, epochs_done = _resume_point(inputs)
  # A non-chief worker writes its logs, sample captions and export into
  # scratch, removed at the end: the model run folder is the chief's.
  scratch = None if chief else tempfile.mkdtemp()
  if train_cfg.scst_steps and scst.cross_entropy_done(backup_dir):
    history = scst.restore_cross_entropy(captioner, backup_dir)
  else:
    history = _fit(captioner, inputs, train_cfg, train_data, backup_dir,
                   epochs_done, fn_args.model_run_dir if chief else scratch,
                   chief)
  if train_cfg.scst_steps:
    if chief:  # the backup folder is the chief's (trainer/backup.py)
      scst.save_cross_entropy(captioner, backup_dir, history)
    scst_history = scst.fine_tune(captioner, inputs, train_cfg, strategy,
                                  backup_dir, chief, scratch)
  print(f"Trainer: {distribute.task_name(strategy)} weights sha256 "
        f"{distribute.weights_digest(captioner)}", flush=True)

  # Workers must still run the export's collective ops, into scratch.
  export_dir = fn_args.serving_model_dir if chief else os.path.join(
      scratch, "export")
  _export(captioner, inputs, eval_cfg, serving_cfg, export_dir)
  if not chief:
    tf.io.gfile.rmtree(scratch)
    _wait_for_the_chiefs_export(fn_args.serving_model_dir)
    return
  outputs.write_provenance(export_dir, features_cfg)
  outputs.write_history(history, fn_args.model_run_dir)
  if train_cfg.scst_steps:
    outputs.write_scst_history(scst_history, fn_args.model_run_dir)
  logging.info("exported the serving model to %s", fn_args.serving_model_dir)
