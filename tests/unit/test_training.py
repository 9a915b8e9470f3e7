"""Training pieces apart from a pipeline: smart initialization, decoding at
temperatures, the learning-rate schedule, strategy choice, curves."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from core import config as config_lib
from core import text
from tests.helpers import decoding_oracles
from tests.helpers import transformed
from trainer import backup
from trainer import data
from trainer import distribute
from trainer import outputs
from trainer import preprocessing
from trainer import task
from trainer.models import layers
from trainer.models import losses
from trainer.models import transformer

VOCAB = 2000
GRID = (4, 4, 32)


def _zipf_captions(rng, count, length):
  """Token ids 4.. drawn from a Zipf-like law, ending in [END]."""
  ranks = np.arange(1, VOCAB - 4 + 1)
  probs = (1.0 / ranks) / np.sum(1.0 / ranks)
  tokens = 4 + rng.choice(len(ranks), size=(count, length), p=probs)
  tokens[:, -1] = text.END_ID
  return tokens.astype("int64")


def test_untrained_loss_is_the_label_entropy_not_log_vocabulary():
  rng = np.random.default_rng(0)
  labels = _zipf_captions(rng, 256, 12)
  counts = np.bincount(labels.ravel(), minlength=VOCAB)
  probs = counts[counts > 0] / counts.sum()
  entropy = float(-(probs * np.log(probs)).sum())
  keras.utils.set_random_seed(0)
  captioner = transformer.Captioner(VOCAB, GRID, units=256, num_heads=2,
                                    dropout_rate=0.0, max_length=16,
                                    label_counts=counts)
  images = rng.normal(size=(256, *GRID)).astype("float32")
  inputs = np.concatenate([np.full((256, 1), text.START_ID), labels[:, :-1]],
                          axis=1)
  loss = float(losses.masked_loss(
      tf.constant(labels), captioner((images, inputs))))
  assert loss == pytest.approx(entropy, abs=0.05)
  assert loss < np.log(VOCAB) - 1.0
  # Without the smart bias the same model starts near log(vocabulary).
  plain = transformer.Captioner(VOCAB, GRID, units=256, num_heads=2,
                                dropout_rate=0.0, max_length=16)
  plain_loss = float(losses.masked_loss(
      tf.constant(labels), plain((images, inputs))))
  assert plain_loss > entropy + 1.0


def _small_captioner():
  keras.utils.set_random_seed(1)
  return transformer.Captioner(30, GRID, num_layers=1, units=16, num_heads=1,
                               dropout_rate=0.0, max_length=10)


def test_temperature_zero_is_greedy_and_sampling_is_seeded():
  captioner = _small_captioner()
  images = tf.random.stateless_normal((3, *GRID), seed=(1, 2))
  greedy = captioner.greedy_decode(images).numpy()
  np.testing.assert_array_equal(captioner.decode(images).numpy(), greedy)
  hot = captioner.decode(images, temperature=1.0, seed=7).numpy()
  np.testing.assert_array_equal(
      captioner.decode(images, temperature=1.0, seed=7).numpy(), hot)
  assert not np.array_equal(
      hot, captioner.decode(images, temperature=1.0, seed=8).numpy())
  banned = set(layers.BANNED_TOKENS) - {text.PAD_ID}
  assert not banned & set(hot.ravel())


@pytest.mark.parametrize("architecture", ["transformer", "show_attend_tell",
                                          "patch_transformer"])
def test_sample_captions_equal_eager_decoding_from_one_trace(tmp_path,
                                                           architecture):
  from trainer import callbacks  # pylint: disable=g-import-not-at-top
  from trainer import models  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(1)
  captioner = models.build_captioner(config_lib.ModelConfig(
      architecture=architecture, num_layers=1, units=16, num_heads=1,
      dropout=0.0, max_length=10, rnn_units=16, encoder_layers=1), 30, GRID)
  vocabulary = list(text.RESERVED_TOKENS) + [
      f"w{i}" for i in range(30 - len(text.RESERVED_TOKENS))]
  images = tf.random.stateless_normal((2, *GRID), seed=(3, 4)).numpy()
  expected = {t: [text.ids_to_caption(row, vocabulary) for row in
                  captioner.decode(tf.constant(images), temperature=t,
                                   seed=7).numpy()]
              for t in callbacks.TEMPERATURES}
  out = tmp_path / "sample_captions.jsonl"
  sample = callbacks.SampleCaptions(images, [["a"], ["b"]], vocabulary,
                                    str(out), seed=7)
  sample.set_model(captioner)
  assert sample.captions() == expected
  sample.on_epoch_end(0)
  sample.on_epoch_end(1)
  # One graph for every temperature and epoch, not a trace per call.
  assert sample._decoder().experimental_get_tracing_count() == 1  # pylint: disable=protected-access
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [1, 2]
  assert all(r["captions"] == {str(t): c for t, c in expected.items()}
             for r in rows)


def test_ids_to_caption_stops_at_end_and_drops_special_tokens():
  vocab = ["[PAD]", "[UNK]", "[START]", "[END]", "a", "red", "circle"]
  ids = [4, 1, 5, 6, text.END_ID, 4, 4]
  assert text.ids_to_caption(ids, vocab) == "a red circle"


def test_warmup_cosine_schedule_rises_then_decays():
  cfg = config_lib.TrainingConfig(epochs=2, steps_per_epoch=50,
                                  learning_rate=1e-3,
                                  lr_schedule="warmup_cosine",
                                  warmup_steps=10)
  schedule = task.learning_rate(cfg)
  rates = [float(schedule(step)) for step in (0, 5, 10, 55, 99)]
  assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-3)
  assert rates[2] > rates[3] > rates[4] >= 0.0
  assert task.learning_rate(config_lib.TrainingConfig()) == 1e-3
  with pytest.raises(ValueError, match="training.lr_schedule"):
    task.learning_rate(config_lib.TrainingConfig(lr_schedule="step"))


def test_a_resumed_run_keeps_the_optimizer_state(tmp_path):
  # Training stops after its first epoch; a new process (here: a new model)
  # resumes from the backup with Adam's moments and step count (Keras builds
  # the optimizer before loading), so the schedule's warm-up is not rerun.
  model_cfg = config_lib.ModelConfig(num_layers=1, units=16, num_heads=1,
                                     dropout=0.0, max_length=10)
  train_cfg = config_lib.TrainingConfig(
      epochs=2, steps_per_epoch=3, lr_schedule="warmup_cosine",
      warmup_steps=4)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, *GRID)).astype("float32")
  tokens = rng.integers(4, 30, size=(8, 6)).astype("int64")
  dataset = tf.data.Dataset.from_tensor_slices(
      ((images, tokens), tokens)).batch(4).repeat()

  def captioner():
    keras.utils.set_random_seed(0)
    model = task.compiled_captioner(model_cfg, train_cfg, 30, GRID, None)
    model((images[:4], tokens[:4]))  # built, as run_fn builds it
    return model

  class StopAfterFirstEpoch(keras.callbacks.Callback):

    def on_epoch_begin(self, epoch, logs=None):
      if epoch == 1:
        raise RuntimeError("killed")

  first = captioner()
  with pytest.raises(RuntimeError, match="killed"):
    first.fit(dataset, epochs=2, steps_per_epoch=3, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(str(tmp_path)),
        StopAfterFirstEpoch()])
  second = captioner()
  assert int(second.optimizer.iterations.numpy()) == 0
  restore = keras.callbacks.BackupAndRestore(str(tmp_path))
  restore.set_model(second)
  restore.on_train_begin()
  assert int(second.optimizer.iterations.numpy()) == 3
  saved, restored = first.optimizer.variables, second.optimizer.variables
  assert len(restored) == len(saved) > 2  # moments, not only step and rate
  for before, after in zip(saved, restored):
    np.testing.assert_array_equal(after.numpy(), before.numpy())


def test_build_for_fit_needs_only_the_element_spec():
  # run_fn builds from the training dataset's element_spec, not from a batch
  # drawn from it: the same weights as a build from a real batch, and fit
  # then runs on Keras' build skipped.
  model_cfg = config_lib.ModelConfig(num_layers=1, units=16, num_heads=1,
                                     dropout=0.0, max_length=10)
  train_cfg = config_lib.TrainingConfig(epochs=1, steps_per_epoch=2)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, *GRID)).astype("float32")
  tokens = rng.integers(4, 30, size=(8, 6)).astype("int64")
  dataset = tf.data.Dataset.from_tensor_slices(
      ((images, tokens), tokens)).batch(4).repeat()
  zeros = distribute.spec_batch(dataset.element_spec)
  assert [z.shape for z in tf.nest.flatten(zeros)] == [  # batch: None -> 2
      (2, *GRID), (2, 6), (2, 6)]
  assert [z.dtype for z in tf.nest.flatten(zeros)] == [
      tf.float32, tf.int64, tf.int64]

  keras.utils.set_random_seed(0)
  from_batch = task.compiled_captioner(model_cfg, train_cfg, 30, GRID, None)
  from_batch((images[:4], tokens[:4]))
  keras.utils.set_random_seed(0)
  from_spec = task.compiled_captioner(model_cfg, train_cfg, 30, GRID, None)
  distribute.build_for_fit(from_spec, dataset.element_spec)
  assert from_spec.optimizer.built
  assert len(from_spec.weights) == len(from_batch.weights) > 4
  for a, b in zip(from_spec.weights, from_batch.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  history = from_spec.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
  assert np.isfinite(history.history["loss"][0])


def test_strategy_follows_the_hardware_found():
  one_worker = json.dumps({"cluster": {"worker": ["host:2222"]},
                           "task": {"type": "worker", "index": 0}})
  assert distribute._workers(one_worker) == 1
  assert distribute._workers(json.dumps(
      {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}})) == 3
  default = distribute.choose_strategy(tf_config="", gpus=0)
  assert default is tf.distribute.get_strategy()
  assert distribute.choose_strategy(tf_config=one_worker, gpus=1) is (
      tf.distribute.get_strategy())
  mirrored = distribute.choose_strategy(tf_config="", gpus=2)
  assert isinstance(mirrored, tf.distribute.MirroredStrategy)
  assert distribute.set_precision(gpus=0) == "float32"


def test_backup_key_depends_on_content_not_location(tmp_path):
  def files(folder, data):
    folder.mkdir()
    (folder / "vocab").write_text("[PAD]\n[UNK]\n[START]\n[END]\na\n")
    (folder / "part-0.gz").write_bytes(data)
    return str(folder / "vocab"), [str(folder / "part-*")]
  config = {"model": {"units": 8}, "training": {"epochs": 2}, "features": {}}
  key_a = backup.backup_key(config, *files(tmp_path / "a", b"12345"))
  key_b = backup.backup_key(config, *files(tmp_path / "b", b"12345"))
  key_c = backup.backup_key(config, *files(tmp_path / "c", b"123456"))
  assert key_a == key_b != key_c
  other = {**config, "training": {"epochs": 3}}
  assert backup.backup_key(other, *files(tmp_path / "d", b"12345")) != key_a


def test_training_curves_png(tmp_path):
  history = {"epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.5],
             "val_loss": [3.1, 2.4, 2.0], "masked_accuracy": [0.1, 0.3, 0.4],
             "val_masked_accuracy": [0.1, 0.25, 0.3]}
  path = tmp_path / "curves.png"
  outputs.save_training_curves(history, str(path))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert path.stat().st_size > 10_000


def test_model_a_trains_and_decodes_under_mixed_precision():
  # What a GPU Trainer runs (distribute.set_precision); float16 works on CPU.
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    captioner = transformer.Captioner(30, GRID, num_layers=1, units=16,
                                      num_heads=2, dropout_rate=0.0,
                                      max_length=8)
    captioner.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=losses.masked_loss)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, *GRID)).astype("float32")
    tokens = rng.integers(4, 30, size=(8, 6)).astype("int64")
    history = captioner.fit((images, tokens[:, :-1]), tokens[:, 1:],
                            epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert captioner((images, tokens)).dtype == tf.float32  # TokenOutput
    cached, _ = captioner.decode_cached(tf.constant(images))
    np.testing.assert_array_equal(
        cached.numpy(),
        decoding_oracles.decode_full_prefix(captioner, tf.constant(images)))
    assert captioner.beam_search(tf.constant(images), 2)[0].shape[0] == 8
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_zero_steps_per_epoch_means_one_pass_over_the_pairs(capsys):
  config = config_lib.from_dict({"training": {
      "batch_size": 64, "steps_per_epoch": 0, "eval_steps": 0}}).training
  asked = []
  sized = task.epochs_over_the_data(config, 25000, lambda: asked.append(1)
                                    or 2500)
  assert (sized.steps_per_epoch, sized.eval_steps) == (391, 40)
  assert asked == [1]
  assert "25000 training pairs; epochs of 391 steps of 64" in (
      capsys.readouterr().out)
  fixed = config_lib.from_dict({"training": {
      "steps_per_epoch": 250, "eval_steps": 10}}).training
  kept = task.epochs_over_the_data(fixed, 25000, lambda: 1 / 0)
  assert (kept.steps_per_epoch, kept.eval_steps) == (250, 10)
  tiny = task.epochs_over_the_data(config, 5, lambda: 1)
  assert (tiny.steps_per_epoch, tiny.eval_steps) == (1, 1)


def test_the_label_pass_reads_the_training_labels_without_the_images(
    tmp_path):
  from tfx.components.trainer import fn_args_utils  # pylint: disable=g-import-not-at-top
  from tfx.components.util import tfxio_utils  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  folders = transformed.make(tmp_path, train_images=40, eval_images=4)
  examples = standard_artifacts.Examples()
  examples.uri = folders["transformed_examples"]
  accessor = fn_args_utils.DataAccessor(
      tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact(
          [examples], []), record_batch_factory=None, data_view_decode_fn=None)
  transform_output = tft.TFTransformOutput(folders["transform_graph"])
  schema = transform_output.transformed_metadata.schema
  files = os.path.join(folders["transformed_examples"], "Split-train", "*")
  # max_length 5 cuts the longer captions (up to 7 words and [END]).
  pairs = data.caption_pairs(files, accessor, schema, transformed.GRID, 8, 5,
                             repeat=False)
  labels = data.caption_labels(files, accessor, schema, 8, 5)
  # No autotuning thread: dropping an iterator would wait for it (data.py).
  assert pairs.options().autotune.enabled is False
  assert labels.options().autotune.enabled is False
  # The model gets float32 grids, whatever the cache stores (float16 here,
  # kept so through the shuffle buffer and widened per batch).
  assert pairs.element_spec[0][0].dtype == tf.float32
  (images, _), _ = next(iter(pairs))
  np.testing.assert_array_equal(
      images.numpy(), images.numpy().astype("float16").astype("float32"))
  want = [y.numpy() for _, y in pairs]
  got = [y.numpy() for y in labels]
  assert len(got) == len(want) > 1
  for a, b in zip(got, want):  # the same rows, padding included
    np.testing.assert_array_equal(a, b)
  vocab_size = transform_output.vocabulary_size_by_name(
      preprocessing.VOCAB_NAME)
  counts, count = data.label_statistics(labels, vocab_size)
  want_counts, want_count = data.label_statistics(pairs, vocab_size)
  np.testing.assert_array_equal(counts, want_counts)
  assert count == want_count == data.count_pairs(labels)
