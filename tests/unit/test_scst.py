"""Self-critical sequence training (trainer/scst.py) on a toy case."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from core import coco_metrics
from core import config as config_lib
from core import features
from core import text
from trainer import scst
from trainer.models import transformer

GRID = (2, 2, 8)
WORDS = ["a", "red", "circle", "on", "the", "left", "blue", "square",
         "right", "green", "top", "big"]
VOCABULARY = ["", "[UNK]", "[START]", "[END]"] + WORDS
REFERENCES = ["a red circle on the left", "a red circle on the left",
              "the red circle on the left"]
OTHER_IMAGES = [["a blue square on the right"], ["a green square on top"],
                ["a big blue square"]]


def _ids(caption, length=8):
  ids = [VOCABULARY.index(w) for w in caption.split()] + [text.END_ID]
  return ids + [text.PAD_ID] * (length - len(ids))


def _toy():
  """A tiny captioner, one image twice over with its references, and the
  CIDEr-D reward with document frequencies of four toy images."""
  keras.utils.set_random_seed(3)
  captioner = transformer.Captioner(len(VOCABULARY), GRID, num_layers=1,
                                    units=16, num_heads=1, dropout_rate=0.0,
                                    max_length=8)
  images = tf.random.stateless_normal((2, *GRID), seed=(1, 2))
  images = tf.concat([images[:1], images[:1]], axis=0)
  references = np.array([[[text.START_ID] + _ids(r)[:-1] for r in REFERENCES]]
                        * 2, np.int64)
  df = coco_metrics.DocumentFrequency()
  for refs in [REFERENCES] + OTHER_IMAGES:
    df.add_image(coco_metrics.ngram_counts(r) for r in refs)
  captioner((images, tf.zeros((2, 7), tf.int64)))
  return captioner, images, references, scst.CiderReward(VOCABULARY, df)


def _sample_reward(captioner, images, references, reward):
  """Mean CIDEr-D of 16 fixed-seed samples per image (temperature 1)."""
  scores = [reward.scores(captioner.decode(images, temperature=1.0,
                                           seed=100 + s).numpy(), references)
            for s in range(16)]
  return float(np.mean(scores))


def _greedy_reward(captioner, images, references, reward):
  return float(reward.scores(captioner.greedy_decode(images).numpy(),
                             references)[0])


def test_scst_pushes_the_model_towards_higher_reward_captions():
  captioner, images, references, reward = _toy()
  sampled_before = _sample_reward(captioner, images, references, reward)
  greedy_before = _greedy_reward(captioner, images, references, reward)
  trainer = scst.ScstTrainer(captioner, reward.scores, samples=8,
                             baseline="mean", seed=0)
  trainer.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
  dataset = tf.data.Dataset.from_tensors((images, references)).repeat()
  history = trainer.fit(dataset, epochs=1, steps_per_epoch=60, verbose=0)
  assert np.isfinite(history.history["loss"][0])
  sampled_after = _sample_reward(captioner, images, references, reward)
  greedy_after = _greedy_reward(captioner, images, references, reward)
  # Random words at first (CIDEr-D ~0.9); after, "red circle on the ..."
  assert sampled_after > sampled_before + 1.0
  assert greedy_after > greedy_before + 1.0


def test_the_greedy_baseline_is_the_greedy_caption_reward():
  captioner, images, references, reward = _toy()
  greedy = _greedy_reward(captioner, images, references, reward)
  trainer = scst.ScstTrainer(captioner, reward.scores, samples=2,
                             baseline="greedy", seed=0)
  trainer.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=False)
  dataset = tf.data.Dataset.from_tensors((images, references)).repeat()
  history = trainer.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
  assert history.history["baseline"][0] == pytest.approx(greedy, rel=1e-5)
  assert np.isfinite(history.history["loss"][0])
  with pytest.raises(ValueError, match="scst_samples"):
    scst.ScstTrainer(captioner, reward.scores, samples=1, baseline="mean")


def test_the_reward_is_cider_d_against_the_image_references():
  _, _, references, reward = _toy()
  captions = np.array([_ids(REFERENCES[0]), _ids("a blue square"),
                       _ids("a red circle on the left"), _ids("")], np.int64)
  scores = reward.scores(captions, references)
  assert scores[0] == pytest.approx(scores[2]) and scores[0] > 2.0
  assert scores[1] < 0.5 and scores[3] == 0.0
  expected = coco_metrics.cider_d_image_score(
      coco_metrics.CiderImageStats.from_captions("a blue square", REFERENCES),
      reward.df)
  assert scores[1] == pytest.approx(expected)


def test_mean_of_others_baseline():
  rewards = tf.constant([1.0, 2.0, 3.0, 10.0, 0.0, 2.0])
  np.testing.assert_allclose(scst.mean_of_others(rewards, 3).numpy(),
                             [2.5, 2.0, 1.5, 1.0, 6.0, 5.0])


def test_log_prob_counts_end_and_not_padding():
  captioner, images, _, _ = _toy()
  ids = tf.constant([_ids("a red", 7), _ids("a red circle", 7)], tf.int64)
  ours = scst.caption_log_prob(captioner, images, ids).numpy()
  np.testing.assert_allclose(
      ours, captioner.sequence_log_prob(images, ids).numpy(), rtol=1e-5)
  # [END] counts: the longer caption's log-prob is not the shorter's plus
  # padding, and a caption with padding changed beyond [END] is the same.
  padded = ids.numpy().copy()
  assert (padded[:, -1] == text.PAD_ID).all()
  logits = captioner((images, tf.concat(
      [tf.fill([2, 1], tf.constant(text.START_ID, tf.int64)), ids[:, :-1]],
      1)))
  manual = tf.reduce_sum(tf.nn.log_softmax(logits)[0, :3] * tf.one_hot(
      ids[0, :3], len(VOCABULARY)))
  assert ours[0] == pytest.approx(float(manual), rel=1e-5)


def test_image_references_keep_every_caption_of_an_image():
  # Two images: 2 and 1 captions (tokens of all captions concatenated).
  tokens = [[2, 4, 5, 3, 2, 6, 3], [2, 7, 3]]
  lengths = [[4, 3], [3]]

  def sparse(rows):
    indices = [[i, j] for i, row in enumerate(rows) for j in range(len(row))]
    return tf.SparseTensor(indices, [v for row in rows for v in row],
                           [len(rows), max(map(len, rows))])

  batch = {features.CAPTION_TOKENS: tf.cast(sparse(tokens), tf.int64),
           features.CAPTION_LENGTHS: tf.cast(sparse(lengths), tf.int64),
           features.IMAGE_FEATURES: tf.constant(
               [np.zeros(GRID, np.float16).tobytes()] * 2)}
  (first, refs1), (_, refs2) = list(scst._split_images(  # pylint: disable=protected-access
      batch, list(GRID), "float16"))
  assert first.shape == GRID
  assert scst.references_text(refs1.numpy(), VOCABULARY) == [
      "a red", "circle"]
  assert scst.references_text(refs2.numpy(), VOCABULARY) == ["on"]


def test_scst_keys_are_validated():
  training = config_lib.TrainingConfig(scst_steps=10, scst_baseline="greedy",
                                       scst_samples=1)
  assert training.scst_samples == 1
  with pytest.raises(ValueError, match="scst_baseline"):
    config_lib.TrainingConfig(scst_baseline="best")
  with pytest.raises(ValueError, match="scst_samples"):
    config_lib.TrainingConfig(scst_steps=10, scst_samples=1)
  assert config_lib.TrainingConfig().scst_steps == 0
  assert scst.chunks(200) == (8, 25) and scst.chunks(10) == (1, 10)


def test_progress_lines_count_steps_across_epochs():
  import io  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  progress = scst.ScstProgress(steps_per_epoch=25, total=200,
                               every_seconds=1e9, out=out)
  progress.on_epoch_begin(2)          # resumed after 2 epochs (50 steps)
  progress.on_train_batch_end(0, {"reward": 0.5, "baseline": 0.4})
  progress.on_epoch_end(2, {"reward": 0.83, "baseline": 0.8})
  line, = out.getvalue().splitlines()
  assert line.startswith("Trainer: scst step 75/200 reward 0.830 baseline "
                         "0.800 (")
  assert line.endswith("steps/s)")


def test_progress_says_a_step_once():
  import io  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  progress = scst.ScstProgress(steps_per_epoch=2, total=2, every_seconds=0.0,
                               out=out)
  progress.on_epoch_begin(0)
  for batch in range(2):
    progress.on_train_batch_end(batch, {"reward": 1.0, "baseline": 1.0})
  progress.on_epoch_end(0, {"reward": 1.0, "baseline": 1.0})
  assert [l.split(" reward")[0] for l in out.getvalue().splitlines()] == [
      "Trainer: scst step 1/2", "Trainer: scst step 2/2"]


def test_scst_steps_under_mixed_precision():
  # What a GPU Trainer runs (distribute.set_precision); float16 works on CPU.
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    captioner, images, references, reward = _toy()
    assert captioner.dtype_policy.compute_dtype == "float16"
    ids = captioner.decode(images, temperature=1.0, seed=1)
    assert scst.caption_log_prob(captioner, images, ids).dtype == tf.float32
    train_cfg = config_lib.TrainingConfig(scst_steps=2, scst_samples=4,
                                          scst_learning_rate=1e-2)
    trainer = scst.scst_trainer(captioner, reward, train_cfg)
    # Keras wraps the optimizer of a mixed_float16 model: loss scaling.
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    scaled = []
    scale_loss = trainer.optimizer.scale_loss

    def recording_scale_loss(loss):
      scaled.append(loss.dtype)
      return scale_loss(loss)

    trainer.optimizer.scale_loss = recording_scale_loss
    before = [w.numpy() for w in captioner.trainable_weights]
    assert all(w.dtype == "float32" for w in before)
    dataset = tf.data.Dataset.from_tensors((images, references)).repeat()
    history = trainer.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    after = [w.numpy() for w in captioner.trainable_weights]
    # The step's float32 loss went through the loss scale, the scale stayed
    # (no overflow), and both steps were applied: finite, changed weights.
    assert scaled == [tf.float32]
    assert float(trainer.optimizer.dynamic_scale.numpy()) == 2.0 ** 15
    assert int(trainer.optimizer.iterations.numpy()) == 2
    assert np.isfinite(history.history["loss"][0])
    assert history.history["reward"][0] > 0
    assert all(np.isfinite(a).all() for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
  finally:
    keras.mixed_precision.set_global_policy("float32")
