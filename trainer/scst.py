"""Self-critical sequence training (SCST) after cross-entropy training.

Rennie et al. 2017, with ruotianluo/ImageCaptioning.pytorch's "new
self-critical" baseline as the default. Each step takes `scst_batch_size`
training images, samples `scst_samples` captions per image with the model's
own in-graph sampler (`CaptionModel.decode`, temperature 1, a stateless seed
per step and replica), and scores every sample with CIDEr-D against all the
image's reference captions (core/coco_metrics.py, with document frequencies
from the training split's references, counted once before the first step).
The baseline is the mean reward of the image's other samples (`mean`) or the
reward of its greedy caption (`greedy`), and

  loss = -mean over samples of (reward - baseline) * log p(sample),

log p the sample's summed teacher-forced log-probability, [END] included,
padding after it excluded. The reward runs in Python (`tf.numpy_function`),
in training only: the exported graph is the captioner's, stock TF ops.

Training goes through Keras `fit` on a small wrapper (`ScstTrainer`) whose
`train_step` is the SCST step, so the distribution strategy, mixed
precision (loss scaling, float32 log-probabilities) and BackupAndRestore
cover this phase as they cover cross-entropy training. The SCST steps are
cut into checkpointed "epochs" of at most `CHUNK_STEPS`; an interrupted
phase resumes after its last completed chunk, and the cross-entropy weights
are kept beside the backup until SCST is done, so a finished cross-entropy
phase is not redone. tests/unit/test_scst_phase.py kills and resumes the
phase, runs it under MirroredStrategy and fits the wrapper under
MultiWorkerMirroredStrategy; tests/unit/test_scst.py runs SCST steps under
mixed_float16.
"""

import json
import math
import os
import sys
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tfx_bsl.public import tfxio

from core import coco_metrics
from core import features
from core import scoring
from core import text
from trainer import backup
from trainer import callbacks as callbacks_lib
from trainer import data
from trainer import distribute

# SCST steps per checkpointed epoch (at most).
CHUNK_STEPS = 25
BASELINES = ("mean", "greedy")


# ---------------------------------------------------------------------------
# Data: one element per image, with all its references.
# ---------------------------------------------------------------------------


def _split_images(batch, grid, dtype):
  """A TFXIO batch -> (image grid, reference token ids (captions, tokens))
  per image, references padded with PAD_ID."""
  tokens = tf.RaggedTensor.from_sparse(batch[features.CAPTION_TOKENS])
  lengths = tf.RaggedTensor.from_sparse(batch[features.CAPTION_LENGTHS])
  captions = tf.RaggedTensor.from_row_lengths(tokens.flat_values,
                                              lengths.flat_values)
  per_image = tf.RaggedTensor.from_row_lengths(captions, lengths.row_lengths())
  images = data.decode_features(batch[features.IMAGE_FEATURES], grid, dtype)
  return tf.data.Dataset.from_tensor_slices(
      (images, per_image.to_tensor(default_value=text.PAD_ID)))


def image_references(file_pattern, data_accessor, schema, grid, batch_size,
                     shuffle_buffer=0, repeat=True, seed=None,
                     dtype=features.DEFAULT_FEATURE_DTYPE):
  """(images (b, h, w, c), reference ids (b, captions, tokens)) per batch of
  images; missing captions / tokens are PAD_ID."""
  dataset = data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(batch_size=data._READ_BATCH,  # pylint: disable=protected-access
                                     num_epochs=1, shuffle=False),
      schema)
  dataset = dataset.flat_map(lambda b: _split_images(b, grid, dtype))
  if repeat:
    dataset = dataset.repeat()
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
  return data.without_autotuning(
      dataset.padded_batch(batch_size).prefetch(tf.data.AUTOTUNE))


def references_text(reference_ids, vocabulary):
  """(captions, tokens) ids of one image -> its non-empty captions, as the
  reward scores them (vocabulary words, whitespace-tokenized)."""
  captions = (text.ids_to_caption(row, vocabulary) for row in reference_ids)
  return [scoring.tokenize(c, pretokenized=True) for c in captions if c]


def training_document_frequency(dataset, vocabulary):
  """CIDEr-D's document frequencies over the references of one pass of an
  `image_references(..., repeat=False)` dataset."""
  df = coco_metrics.DocumentFrequency()
  for _, reference_ids in dataset:
    for image_refs in reference_ids.numpy():
      refs = references_text(image_refs, vocabulary)
      if refs:
        df.add_image(coco_metrics.ngram_counts(r) for r in refs)
  return df


# ---------------------------------------------------------------------------
# Rewards (Python, training only).
# ---------------------------------------------------------------------------


class CiderReward:
  """CIDEr-D of sampled captions against their image's references."""

  def __init__(self, vocabulary, document_frequency):
    if document_frequency.num_images <= 0:
      raise ValueError("SCST: the training split has no reference captions")
    self.vocabulary = vocabulary
    self.df = document_frequency

  def scores(self, caption_ids, reference_ids):
    """caption ids (n, T), references (n / k images ... see below).

    reference_ids (b, captions, tokens); caption_ids (b * k, T) with the k
    captions of image i in rows i*k .. i*k + k - 1. -> CIDEr-D (b * k,).
    """
    per_image = len(caption_ids) // max(len(reference_ids), 1)
    out = np.zeros(len(caption_ids), np.float32)
    for i, image_refs in enumerate(reference_ids):
      refs = references_text(image_refs, self.vocabulary)
      if not refs:
        continue
      for j in range(i * per_image, (i + 1) * per_image):
        hypothesis = text.ids_to_caption(caption_ids[j], self.vocabulary)
        stats = coco_metrics.CiderImageStats.from_captions(
            scoring.tokenize(hypothesis, pretokenized=True), refs)
        out[j] = coco_metrics.cider_d_image_score(stats, self.df)
    return out


def mean_of_others(rewards, samples):
  """(b * k,) rewards -> per sample the mean reward of its image's other
  k - 1 samples (ruotianluo's "new self-critical" baseline)."""
  grouped = tf.reshape(rewards, [-1, samples])
  others = (tf.reduce_sum(grouped, axis=1, keepdims=True) - grouped) / (
      samples - 1)
  return tf.reshape(others, [-1])


def caption_log_prob(captioner, images, ids, training=False):
  """Teacher-forced summed log-probability (float32) of captions ids (b, T)
  under the captioner, [END] included and the padding after it excluded."""
  batch = tf.shape(ids)[0]
  start = tf.fill([batch, 1], tf.constant(text.START_ID, tf.int64))
  inputs = tf.concat([start, ids[:, :-1]], axis=1)
  logits = captioner((images, inputs), training=training)
  log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
  picked = tf.gather(log_probs, ids, batch_dims=2)              # (b, T)
  return tf.reduce_sum(tf.where(ids != text.PAD_ID, picked, 0.0), axis=1)


# ---------------------------------------------------------------------------
# The SCST step.
# ---------------------------------------------------------------------------


class ScstTrainer(keras.Model):
  """Wraps a built CaptionModel; `fit` on `image_references` batches runs
  SCST steps on it. `reward(caption ids (b*k, T), reference ids (b, R, L))`
  -> float32 (b*k,) is any numpy function (CiderReward.scores)."""

  def __init__(self, captioner, reward, samples=5, baseline="mean", seed=0,
               **kwargs):
    super().__init__(**kwargs)
    if baseline not in BASELINES:
      raise ValueError(f"scst_baseline {baseline!r}: choose mean or greedy")
    if baseline == "mean" and samples < 2:
      raise ValueError("the mean baseline needs scst_samples >= 2")
    self.captioner = captioner
    self.reward = reward
    self.samples = samples
    self.baseline = baseline
    self.seed = seed
    self.built = True
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.reward_tracker = keras.metrics.Mean(name="reward")
    self.baseline_tracker = keras.metrics.Mean(name="baseline")

  @property
  def metrics(self):
    return [self.loss_tracker, self.reward_tracker, self.baseline_tracker]

  def call(self, inputs, training=False):
    return self.captioner(inputs, training=training)

  def _rewards(self, ids, reference_ids):
    scores = tf.numpy_function(self.reward, [ids, reference_ids], tf.float32,
                               stateful=False)
    return tf.reshape(scores, [tf.shape(ids)[0]])

  def train_step(self, batch):
    images, reference_ids = batch
    k = self.samples
    repeated = tf.repeat(images, k, axis=0)                  # (b * k, ...)
    replica = tf.distribute.get_replica_context()
    replica_id = replica.replica_id_in_sync_group if replica else 0
    # A new stateless seed every step (and replica): different samples.
    step_seed = (tf.cast(self.optimizer.iterations, tf.int32) * 7919
                 + tf.cast(replica_id, tf.int32) * 104729 + self.seed)
    sampled = tf.stop_gradient(self.captioner.decode(
        repeated, temperature=1.0, seed=step_seed))
    rewards = self._rewards(sampled, reference_ids)
    if self.baseline == "mean":
      baseline = mean_of_others(rewards, k)
    else:
      greedy = tf.stop_gradient(self.captioner.decode(images))
      baseline = tf.repeat(self._rewards(greedy, reference_ids), k)
    advantage = tf.stop_gradient(rewards - baseline)
    with tf.GradientTape() as tape:
      # No dropout: the gradient is of the policy that drew the samples
      # (decode runs without it). With dropout here, Flickr8k dev CIDEr-D
      # gained 1.1% where this gains 2.7% (README, "Self-critical ...").
      log_prob = caption_log_prob(self.captioner, repeated, sampled,
                                  training=False)
      loss = -tf.reduce_mean(advantage * log_prob)
      replicas = tf.distribute.get_strategy().num_replicas_in_sync
      scaled = self.optimizer.scale_loss(loss / replicas)
    weights = self.captioner.trainable_weights
    gradients = tape.gradient(scaled, weights)
    self.optimizer.apply_gradients(zip(gradients, weights))
    self.loss_tracker.update_state(loss)
    self.reward_tracker.update_state(tf.reduce_mean(rewards))
    self.baseline_tracker.update_state(tf.reduce_mean(baseline))
    return {m.name: m.result() for m in self.metrics}


def scst_trainer(captioner, reward, train_cfg):
  """The compiled ScstTrainer of the config's SCST keys (call under the
  distribution strategy's scope)."""
  trainer = ScstTrainer(captioner, reward.scores,
                        samples=train_cfg.scst_samples,
                        baseline=train_cfg.scst_baseline,
                        seed=train_cfg.seed)
  # No XLA: the reward is a numpy_function.
  trainer.compile(optimizer=keras.optimizers.Adam(
      train_cfg.scst_learning_rate), jit_compile=False)
  # Keras' own build in fit fails under MultiWorkerMirroredStrategy.
  distribute.build_optimizer_for_fit(trainer)
  return trainer


# ---------------------------------------------------------------------------
# The phase: resume, progress, fit.
# ---------------------------------------------------------------------------


def chunks(steps):
  """scst_steps -> (epochs, steps per epoch) of at most CHUNK_STEPS; the
  total is `steps` rounded up to a whole number of epochs."""
  epochs = math.ceil(steps / CHUNK_STEPS)
  return epochs, math.ceil(steps / epochs)


class ScstProgress(keras.callbacks.Callback):
  """`Trainer: scst step 40/200 reward 0.83 (1.2 steps/s)`, at most every
  `every_seconds` and at the end of every epoch (checkpoint)."""

  def __init__(self, steps_per_epoch, total, every_seconds=10.0, out=None):
    super().__init__()
    self.steps_per_epoch = steps_per_epoch
    self.total = total
    self.every_seconds = every_seconds
    self.out = out
    self._epoch = 0
    self._started = self._printed = time.monotonic()
    self._first_step = self._last_step = None

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    if self._first_step is None:  # steps done before a resume are not timed
      self._first_step = epoch * self.steps_per_epoch
      self._started = self._printed = time.monotonic()

  def _line(self, step, logs):
    now = time.monotonic()
    rate = (step - self._first_step) / max(now - self._started, 1e-9)
    line = f"Trainer: scst step {step}/{self.total}"
    if logs and logs.get("reward") is not None:
      line += (f" reward {float(logs['reward']):.3f} baseline "
               f"{float(logs['baseline']):.3f}")
    print(line + f" ({rate:.2f} steps/s)", file=self.out or sys.stdout,
          flush=True)
    self._printed, self._last_step = now, step

  def on_train_batch_end(self, batch, logs=None):
    if time.monotonic() - self._printed >= self.every_seconds:
      self._line(self._epoch * self.steps_per_epoch + batch + 1, logs)

  def on_epoch_end(self, epoch, logs=None):
    if self._last_step != (epoch + 1) * self.steps_per_epoch:
      self._line((epoch + 1) * self.steps_per_epoch, logs)


def _ce_weights(backup_dir):
  return backup_dir + ".ce.weights.h5"


def _ce_history(backup_dir):
  return backup_dir + ".ce.history.json"


def cross_entropy_done(backup_dir):
  """Whether an earlier run finished the cross-entropy phase for this key."""
  return tf.io.gfile.exists(_ce_history(backup_dir))


def save_cross_entropy(captioner, backup_dir, history):
  """Keeps the cross-entropy weights and history until SCST is done."""
  captioner.save_weights(_ce_weights(backup_dir), overwrite=True)
  with tf.io.gfile.GFile(_ce_history(backup_dir), "w") as f:
    json.dump(history, f)  # last: it marks the phase as done


def restore_cross_entropy(captioner, backup_dir):
  """Loads the kept cross-entropy weights; returns that phase's history."""
  captioner.load_weights(_ce_weights(backup_dir))
  with tf.io.gfile.GFile(_ce_history(backup_dir)) as f:
    history = json.load(f)
  print(f"Trainer: cross-entropy phase already done; weights from "
        f"{_ce_weights(backup_dir)}", flush=True)
  return history


def fine_tune(captioner, inputs, train_cfg, strategy, backup_dir, chief=True,
              scratch=None):
  """The SCST phase on the training split; returns its per-epoch log (every
  chunk's, across resumes). As in cross-entropy training, only the chief
  writes and removes the backup (every worker resumes from it); another
  worker logs into `scratch`."""
  fn_args = inputs.fn_args
  vocabulary = text.read_vocabulary(inputs.vocab_path)

  def images(**kwargs):
    return image_references(fn_args.train_files, fn_args.data_accessor,
                            inputs.schema, inputs.spec.grid,
                            train_cfg.scst_batch_size,
                            dtype=inputs.features_cfg.dtype, **kwargs)

  started = time.monotonic()
  df = training_document_frequency(images(repeat=False), vocabulary)
  print(f"Trainer: scst document frequencies of {df.num_images} training "
        f"images ({len(df.counts)} n-grams, {time.monotonic() - started:.0f} "
        "s)", flush=True)
  reward = CiderReward(vocabulary, df)
  epochs, per_epoch = chunks(train_cfg.scst_steps)
  scst_backup = backup_dir + ".scst"
  with strategy.scope():
    trainer = scst_trainer(captioner, reward, train_cfg)
  done = _chunks_done(scst_backup)
  if done:
    print(f"Trainer: resuming scst after step {done * per_epoch} from "
          f"{scst_backup}", flush=True)
  logging.info("scst: %d steps of %d images x %d samples, baseline %s, "
               "learning rate %g", epochs * per_epoch,
               train_cfg.scst_batch_size, train_cfg.scst_samples,
               train_cfg.scst_baseline, train_cfg.scst_learning_rate)
  # Every chunk's logs, across resumes (Keras' history has this run's).
  history_log = callbacks_lib.HistoryLog(
      scst_backup + ".history.jsonl" if chief else
      os.path.join(scratch, "scst_history.jsonl"), done)
  trainer.fit(
      images(shuffle_buffer=train_cfg.shuffle_buffer, seed=train_cfg.seed),
      epochs=epochs, steps_per_epoch=per_epoch,
      callbacks=[ScstProgress(per_epoch, epochs * per_epoch), history_log,
                 # Last: the checkpoint is written once the chunk is logged.
                 backup.WorkerBackupAndRestore(scst_backup, chief)],
      verbose=0)
  # The optimizer's step count is part of the checkpoint: after a resume it
  # still counts the steps before it (and seeds each step's samples).
  steps = int(keras.ops.convert_to_numpy(trainer.optimizer.iterations))
  print(f"Trainer: scst done after {steps} optimizer steps", flush=True)
  for path in ((_ce_weights(backup_dir), _ce_history(backup_dir))
               if chief else ()) + (history_log.path,):
    if tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)
  return history_log.history()


def _chunks_done(scst_backup):
  metadata = os.path.join(scst_backup, "training_metadata.json")
  if not tf.io.gfile.exists(metadata):
    return 0
  with tf.io.gfile.GFile(metadata) as f:
    return int(json.load(f).get("epoch", 0))
