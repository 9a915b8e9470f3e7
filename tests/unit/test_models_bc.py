"""Models B (Show, Attend and Tell) and C (patch transformer): fast checks."""

import functools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from core import config as config_lib
from core import text
from tests.helpers import decoding_oracles
from trainer import models
from trainer.models import base
from trainer.models import layers
from trainer.models import losses
from trainer.models import patch_transformer
from trainer.models import show_attend_tell

VOCAB = 20
GRID = (3, 4, 8)
MAX_LENGTH = 12
ARCHS = ("show_attend_tell", "patch_transformer")


def _captioner(arch, grid=GRID, vocab=VOCAB, label_counts=None, **kwargs):
  keras.utils.set_random_seed(0)
  cfg = config_lib.ModelConfig(
      architecture=arch, num_layers=1, units=16, num_heads=2, dropout=0.0,
      max_length=MAX_LENGTH, rnn_units=24, encoder_layers=1, **kwargs)
  return models.build_captioner(cfg, vocab, grid, label_counts=label_counts)


def _inputs(batch=2, length=7, grid=GRID, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(batch, *grid)).astype("float32")
  tokens = rng.integers(4, VOCAB, size=(batch, length)).astype("int64")
  tokens[:, 0] = text.START_ID
  return image, tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_build_captioner_picks_the_class(arch):
  expected = {"show_attend_tell": show_attend_tell.ShowAttendTell,
              "patch_transformer": patch_transformer.PatchTransformer}[arch]
  captioner = _captioner(arch)
  assert type(captioner) is expected  # pylint: disable=unidiomatic-typecheck
  assert isinstance(captioner, base.CaptionModel)
  assert (captioner.vocab_size, captioner.grid, captioner.max_length) == (
      VOCAB, GRID, MAX_LENGTH)


def test_build_captioner_rejects_an_unknown_architecture():
  with pytest.raises(ValueError, match=r"model\.architecture.*'lstm'"):
    _captioner("lstm")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("grid", [(3, 4, 8), (1, 1, 5), (2, 2, 48)])
def test_logits_and_attention_shapes_for_any_grid(arch, grid):
  captioner = _captioner(arch, grid=grid)
  image, tokens = _inputs(batch=3, length=6, grid=grid)
  assert captioner((image, tokens)).shape == (3, 6, VOCAB)
  weights = captioner.last_attention_weights
  cells = grid[0] * grid[1]
  if arch == "show_attend_tell":
    assert weights.shape == (3, 6, cells)                  # (b, t, h*w)
  else:
    assert weights.shape == (3, 1, 2, 6, cells)  # (b, layers, heads, t, h*w)
  np.testing.assert_allclose(np.sum(weights, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_later_token_cannot_change_earlier_logits(arch):
  captioner = _captioner(arch)
  image, tokens = _inputs()
  changed = tokens.copy()
  changed[:, 4:] = (changed[:, 4:] + 3) % (VOCAB - 4) + 4
  before = captioner((image, tokens)).numpy()
  after = captioner((image, changed)).numpy()
  np.testing.assert_allclose(before[:, :4], after[:, :4], atol=1e-5)
  assert not np.allclose(before[:, 4:], after[:, 4:], atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_after_the_caption_does_not_change_its_logits(arch):
  captioner = _captioner(arch)
  image, tokens = _inputs(length=5)
  padded = np.concatenate([tokens, np.zeros((2, 4), np.int64)], axis=1)
  np.testing.assert_allclose(captioner((image, tokens)).numpy(),
                             captioner((image, padded)).numpy()[:, :5],
                             atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_banned_tokens_get_zero_probability(arch):
  image, tokens = _inputs()
  probs = tf.nn.softmax(_captioner(arch)((image, tokens))).numpy()
  for banned in layers.BANNED_TOKENS:
    assert probs[..., banned].max() == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_decode_is_the_stepwise_argmax(arch):
  captioner = _captioner(arch)
  image, _ = _inputs(batch=3)
  decoded = captioner.greedy_decode(tf.constant(image), max_length=6).numpy()
  assert decoded.shape == (3, 5) and decoded.dtype == np.int64
  for row in range(3):
    tokens = [text.START_ID]
    for _ in range(5):
      logits = captioner((image[row:row + 1], np.array([tokens])))
      tokens.append(int(np.argmax(logits[0, -1])))
      if tokens[-1] == text.END_ID:
        break
    assert decoded[row].tolist() == tokens[1:] + [0] * (6 - len(tokens))


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_decode_stops_at_end(arch):
  counts = np.ones(VOCAB)
  counts[text.END_ID] = 1e12  # [END] wins from the first step
  captioner = _captioner(arch, label_counts=counts)
  image, _ = _inputs(batch=2)
  decode = tf.function(lambda grids: captioner.greedy_decode(grids))
  decoded = decode(tf.constant(image)).numpy()
  assert decoded.shape == (2, MAX_LENGTH - 1)
  assert decoded[:, 0].tolist() == [text.END_ID] * 2
  assert not decoded[:, 1:].any()


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_matches_the_full_prefix_loop(arch):
  captioner = _captioner(arch)
  image = tf.constant(_inputs(batch=4, seed=3)[0])
  ids, attention = captioner.decode_cached(image)
  np.testing.assert_array_equal(
      ids.numpy(),
      decoding_oracles.decode_full_prefix(captioner, image).numpy())
  assert attention.shape == (4, MAX_LENGTH - 1, GRID[0] * GRID[1])
  # A distribution over the cells per generated token ([END] included);
  # padding attends nowhere.
  lengths = (ids.numpy() != text.PAD_ID).sum(axis=1)
  for row, length in zip(np.sum(attention, axis=-1), lengths):
    np.testing.assert_allclose(row[:length], 1.0, atol=1e-5)
    np.testing.assert_array_equal(row[length:], 0.0)
  beam_ids, log_prob = captioner.beam_search(image, beam_width=2)
  np.testing.assert_allclose(
      log_prob.numpy(), captioner.sequence_log_prob(image, beam_ids).numpy(),
      rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS + ("transformer",))
def test_beam_search_keeps_the_shared_cache_as_gathering_all_of_it_would(
    arch):
  # The beams of an image share its part of the cache (one copy per image
  # for the Transformer, which attends an image's beams as one block; left
  # alone by reorder_cache): the beams search as when every beam has its
  # own copy of the whole cache and all of it follows them.
  captioner = _captioner(arch)
  image = tf.constant(_inputs(batch=4, seed=5)[0])
  ids, log_prob = captioner.beam_search(image, beam_width=3)
  captioner.start_beam_cache = functools.partial(
      base.CaptionModel.start_beam_cache, captioner)
  captioner.select_beams_cache = functools.partial(
      base.CaptionModel.select_beams_cache, captioner)
  captioner.reorder_cache = captioner.select_cache
  all_ids, all_log_prob = captioner.beam_search(image, beam_width=3)
  np.testing.assert_array_equal(ids.numpy(), all_ids.numpy())
  # One block of 3 query rows against 3 blocks of one: the same sums, which
  # the matmul kernels may round differently.
  np.testing.assert_allclose(log_prob.numpy(), all_log_prob.numpy(),
                             rtol=1e-6, atol=1e-6)


def _bright_cell_task(grid, n=256, seed=0):
  """Caption = [START, word of the bright cell, 18, END]: needs attention."""
  rng = np.random.default_rng(seed)
  h, w, c = grid
  cell = rng.integers(0, h * w, size=n)
  image = 0.1 * rng.normal(size=(n, h * w, c)).astype("float32")
  image[np.arange(n), cell] += 1.0
  tokens = np.stack([np.full(n, text.START_ID), 4 + cell, np.full(n, 18),
                     np.full(n, text.END_ID)], axis=1).astype("int64")
  return image.reshape(n, *grid), tokens, cell


@pytest.mark.parametrize("arch", ARCHS)
def test_each_model_learns_where_the_bright_cell_is(arch):
  grid = (2, 3, 4)
  image, tokens, cell = _bright_cell_task(grid)
  counts = np.bincount(tokens[:, 1:].ravel(), minlength=VOCAB)
  captioner = _captioner(arch, grid=grid, label_counts=counts)
  captioner.compile(optimizer=keras.optimizers.Adam(5e-3),
                    loss=losses.masked_loss)
  data = tf.data.Dataset.from_tensor_slices(
      ((image, tokens[:, :-1]), tokens[:, 1:])).repeat().shuffle(
          256, seed=0).batch(32)
  start_loss = captioner.evaluate((image, tokens[:, :-1]), tokens[:, 1:],
                                  verbose=0)
  captioner.fit(data, steps_per_epoch=300, epochs=1, verbose=0)
  loss = captioner.evaluate((image, tokens[:, :-1]), tokens[:, 1:], verbose=0)
  assert start_loss > 0.5 and loss < 0.05, (start_loss, loss)
  decoded = captioner.greedy_decode(tf.constant(image[:8])).numpy()
  for row in range(8):
    assert decoded[row, :3].tolist() == [4 + cell[row], 18, text.END_ID]
    assert not decoded[row, 3:].any()


@pytest.mark.parametrize("arch", ("transformer",) + ARCHS)
def test_every_model_and_layer_rebuilds_from_its_config(arch):
  counts = np.arange(VOCAB, dtype=np.float64)
  captioner = _captioner(arch, label_counts=counts)
  image, tokens = _inputs()
  logits = captioner((image, tokens)).numpy()
  for layer in captioner._flatten_layers():  # pylint: disable=protected-access
    config = layer.get_config()
    json.dumps(config)  # plain values only
    type(layer).from_config(config)
  rebuilt = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(captioner))
  assert type(rebuilt) is type(captioner)  # pylint: disable=unidiomatic-typecheck
  rebuilt((image, tokens))
  assert [w.shape for w in rebuilt.weights] == [
      w.shape for w in captioner.weights]
  # The smart initialization comes back from label_counts.
  output = (rebuilt.decoder if arch == "show_attend_tell"
            else rebuilt).output_layer
  np.testing.assert_array_equal(output.dense.bias.numpy(),
                                layers.TokenOutput.initial_bias(VOCAB, counts))
  rebuilt.set_weights(captioner.get_weights())
  np.testing.assert_array_equal(rebuilt((image, tokens)).numpy(), logits)
