"""SCST (trainer/scst.py) under MirroredStrategy over two logical CPU
devices (set before TensorFlow starts, as tests/helpers/mirrored_trainer.py
does), in its own process.

  python tests/helpers/mirrored_scst.py step OUT.json
      One ScstTrainer step of a tiny captioner (SGD) on four images, two a
      replica; the reward records what each replica sampled. Writes to
      OUT.json what the step reported and what it should have, recomputed
      eagerly on one device from the recorded samples: the loss, reward and
      baseline over both replicas, and the weight update (-lr x the gradient
      of the global mean loss).

  python tests/helpers/mirrored_scst.py trainer ARGS.json
      TFX's Trainer executor (trainer/standalone.py, as
      tests/helpers/trainer_process.py) with SCST on; then prints
      "scst weights changed: True|False" (the captioner's weights digest
      before and after the SCST phase).
"""

import json
import sys
import threading

import tensorflow as tf

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from core import coco_metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from core import text  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer import distribute  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer import scst  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer import standalone  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.models import transformer  # pylint: disable=g-import-not-at-top,wrong-import-position

GRID = (2, 2, 8)
WORDS = ["a", "red", "circle", "on", "the", "left", "blue", "square",
         "right", "green", "top", "big"]
VOCABULARY = ["", "[UNK]", "[START]", "[END]"] + WORDS
# One reference set per image: which image a replica's call scored is read
# off its references.
REFERENCES = [["a red circle on the left", "the red circle"],
              ["a blue square on the right", "a blue square"],
              ["a green square on top", "green square on top"],
              ["a big blue circle", "the big circle on the left"]]
SAMPLES = 2
LEARNING_RATE = 0.5


def _ids(caption, length=8):
  ids = [text.START_ID] + [VOCABULARY.index(w) for w in caption.split()]
  return ids + [text.PAD_ID] * (length - len(ids))


def _step(out_path):
  strategy = distribute.choose_strategy()
  assert isinstance(strategy, tf.distribute.MirroredStrategy), strategy
  assert strategy.num_replicas_in_sync == 2
  df = coco_metrics.DocumentFrequency()
  for refs in REFERENCES:
    df.add_image(coco_metrics.ngram_counts(r) for r in refs)
  reward = scst.CiderReward(VOCABULARY, df)
  calls, lock = [], threading.Lock()

  def recording_reward(ids, reference_ids):
    scores = reward.scores(ids, reference_ids)
    with lock:
      calls.append((ids.copy(), reference_ids.copy(), scores))
    return scores

  keras.utils.set_random_seed(3)
  images = tf.random.stateless_normal((4, *GRID), seed=(1, 2))
  references = np.array([[_ids(r) for r in refs] for refs in REFERENCES],
                        np.int64)
  with strategy.scope():
    captioner = transformer.Captioner(len(VOCABULARY), GRID, num_layers=1,
                                      units=16, num_heads=1,
                                      dropout_rate=0.0, max_length=8)
    captioner((images, tf.zeros((4, 7), tf.int64)))
    trainer = scst.ScstTrainer(captioner, recording_reward, samples=SAMPLES,
                               baseline="mean", seed=0)
    trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                    jit_compile=False)
  before = [w.numpy() for w in captioner.trainable_weights]
  dataset = tf.data.Dataset.from_tensors((images, references)).repeat()
  history = trainer.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
  after = [w.numpy() for w in captioner.trainable_weights]

  # Recompute on one device, from the weights before the step.
  for weight, value in zip(captioner.trainable_weights, before):
    weight.assign(value)
  replica_losses, rewards, baselines = [], [], []
  with tf.GradientTape() as tape:
    for ids, reference_ids, scores in calls:
      picked = [int(np.flatnonzero((references == r).all(axis=(1, 2)))[0])
                for r in reference_ids]
      repeated = tf.repeat(tf.gather(images, picked), SAMPLES, axis=0)
      baseline = scst.mean_of_others(tf.constant(scores), SAMPLES)
      log_prob = scst.caption_log_prob(captioner, repeated, tf.constant(ids),
                                       training=False)
      replica_losses.append(-tf.reduce_mean(
          (tf.constant(scores) - baseline) * log_prob))
      rewards.append(float(np.mean(scores)))
      baselines.append(float(np.mean(baseline)))
    loss = tf.reduce_mean(tf.stack(replica_losses))
  gradients = tape.gradient(loss, captioner.trainable_weights)
  result = {
      "replica_calls": len(calls),
      "images_scored": sorted(
          int(np.flatnonzero((references == r).all(axis=(1, 2)))[0])
          for _, refs, _ in calls for r in refs),
      "samples_differ": not np.array_equal(calls[0][0], calls[-1][0]),
      "reported": {k: float(v[0]) for k, v in history.history.items()},
      "expected": {"loss": float(loss), "reward": float(np.mean(rewards)),
                   "baseline": float(np.mean(baselines))},
      "replica_losses": [float(l) for l in replica_losses],
      "iterations": int(trainer.optimizer.iterations.numpy()),
      "update_norm": float(np.sqrt(sum(
          np.sum((a - b) ** 2) for a, b in zip(after, before)))),
      "update_error": float(np.sqrt(sum(
          np.sum((a - b + LEARNING_RATE * tf.convert_to_tensor(g).numpy()) ** 2)
          for a, b, g in zip(after, before, gradients)))),
  }
  with open(out_path, "w") as f:
    json.dump(result, f, indent=1)


def _trainer(args_path):
  with open(args_path) as f:
    args = json.load(f)
  digests = []
  fine_tune = scst.fine_tune

  def observed_fine_tune(captioner, *a, **kw):
    digests.append(distribute.weights_digest(captioner))
    history = fine_tune(captioner, *a, **kw)
    digests.append(distribute.weights_digest(captioner))
    return history

  scst.fine_tune = observed_fine_tune
  standalone.run_trainer(**args)
  assert len(digests) == 2, digests
  print(f"scst weights changed: {digests[0] != digests[1]}", flush=True)


if __name__ == "__main__":
  {"step": _step, "trainer": _trainer}[sys.argv[1]](sys.argv[2])
