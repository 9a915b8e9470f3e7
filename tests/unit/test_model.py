import keras
import numpy as np
import pytest
import tensorflow as tf

from core import text
from tests.helpers import decoding_oracles
from trainer.models import base
from trainer.models import layers
from trainer.models import losses
from trainer.models import transformer

VOCAB = 20
GRID = (3, 4, 8)


def _captioner(**kwargs):
  keras.utils.set_random_seed(0)
  return transformer.Captioner(VOCAB, GRID, num_layers=2, units=16, num_heads=2,
                               dropout_rate=0.0, max_length=12, **kwargs)


def _inputs(batch=2, length=7, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(batch, *GRID)).astype("float32")
  tokens = rng.integers(4, VOCAB, size=(batch, length)).astype("int64")
  tokens[:, 0] = text.START_ID
  return image, tokens


def test_layers_keep_the_shapes():
  image, tokens = _inputs()
  embedded = layers.SeqEmbedding(VOCAB, 12, 16)(tokens)
  assert embedded.shape == (2, 7, 16)
  flat_image = tf.reshape(image, (2, 12, 8))
  layer = layers.DecoderLayer(16, num_heads=2, dropout_rate=0.0)
  assert layer(flat_image, embedded).shape == (2, 7, 16)
  assert layer.cross_attention.last_attention_scores.shape == (2, 2, 7, 12)
  assert layers.TokenOutput(VOCAB)(embedded).shape == (2, 7, VOCAB)


def test_captioner_gives_logits_per_position():
  image, tokens = _inputs()
  assert _captioner()((image, tokens)).shape == (2, 7, VOCAB)


def test_a_later_token_cannot_change_earlier_logits():
  captioner = _captioner()
  image, tokens = _inputs()
  changed = tokens.copy()
  changed[:, 4:] = (changed[:, 4:] + 3) % (VOCAB - 4) + 4
  before = captioner((image, tokens)).numpy()
  after = captioner((image, changed)).numpy()
  np.testing.assert_allclose(before[:, :4], after[:, :4], atol=1e-5)
  assert not np.allclose(before[:, 4:], after[:, 4:], atol=1e-3)


def test_padding_after_the_caption_does_not_change_its_logits():
  captioner = _captioner()
  image, tokens = _inputs(length=5)
  padded = np.concatenate([tokens, np.zeros((2, 4), np.int64)], axis=1)
  np.testing.assert_allclose(captioner((image, tokens)).numpy(),
                             captioner((image, padded)).numpy()[:, :5],
                             atol=1e-5)


def test_banned_tokens_get_zero_probability():
  image, tokens = _inputs()
  probs = tf.nn.softmax(_captioner()((image, tokens))).numpy()
  for banned in layers.BANNED_TOKENS:
    assert probs[..., banned].max() == 0.0


def test_smart_initialization_bias_is_the_log_label_frequency():
  counts = np.zeros(VOCAB)
  counts[text.END_ID], counts[5], counts[6] = 10, 30, 60
  bias = layers.TokenOutput.initial_bias(VOCAB, counts)
  assert bias[6] == pytest.approx(np.log(0.6), rel=1e-5)
  assert bias[text.END_ID] == pytest.approx(np.log(0.1), rel=1e-5)
  assert bias[text.START_ID] == layers.BANNED_BIAS
  assert bias[7] == layers.BANNED_BIAS  # never seen as a label


def test_masked_loss_ignores_padding():
  labels = tf.constant([[5, 6, 0, 0]], tf.int64)
  logits = tf.random.normal((1, 4, VOCAB))
  garbage = tf.concat([logits[:, :2], 100 * tf.random.normal((1, 2, VOCAB))],
                      axis=1)
  assert float(losses.masked_loss(labels, logits)) == pytest.approx(
      float(losses.masked_loss(labels, garbage)), rel=1e-6)
  perfect = tf.one_hot([[5, 6, 1, 1]], VOCAB) * 50.0
  assert float(losses.masked_accuracy(labels, perfect)) == 1.0


def test_greedy_decode_matches_stepwise_argmax():
  captioner = _captioner()
  image, _ = _inputs(batch=3)
  decoded = captioner.greedy_decode(tf.constant(image), max_length=6).numpy()
  assert decoded.shape == (3, 5)
  # The same greedy choice, one step at a time from Python.
  for row in range(3):
    tokens = [text.START_ID]
    for _ in range(5):
      logits = captioner((image[row:row + 1], np.array([tokens])))
      next_id = int(np.argmax(logits[0, -1]))
      tokens.append(next_id)
      if next_id == text.END_ID:
        break
    expected = tokens[1:] + [0] * (6 - len(tokens))
    assert decoded[row].tolist() == expected


def _decoding_captioner(seed, image_projection=False):
  keras.utils.set_random_seed(seed)
  counts = np.ones(VOCAB)
  counts[text.END_ID] = 1e-3  # rare [END]: long captions to compare
  return transformer.Captioner(VOCAB, GRID, num_layers=2, units=16, num_heads=2,
                               dropout_rate=0.1, max_length=12,
                               label_counts=counts,
                               image_projection=image_projection)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_decoding_gives_exactly_the_full_prefix_tokens(seed):
  captioner = _decoding_captioner(seed)
  images = tf.random.stateless_normal((6, *GRID), seed=(seed, 9))
  cached, attention = captioner.decode_cached(images)
  full = decoding_oracles.decode_full_prefix(captioner, images)
  np.testing.assert_array_equal(cached.numpy(), full.numpy())
  lengths = (cached.numpy() != text.PAD_ID).sum(axis=1)
  assert lengths.max() > 3, "too short to show anything"
  # Sampling draws the same tokens too (same seeds per position).
  np.testing.assert_array_equal(
      captioner.decode_cached(images, temperature=0.8, seed=5)[0].numpy(),
      decoding_oracles.decode_full_prefix(captioner, images, temperature=0.8,
                                          seed=5).numpy())
  # One attention map per generated token, a distribution over the cells.
  h, w, _ = GRID
  assert attention.shape == (6, 11, h * w)
  sums = attention.numpy().sum(axis=-1)
  for row, length in zip(sums, lengths):
    np.testing.assert_allclose(row[:length], 1.0, atol=1e-5)
    np.testing.assert_allclose(row[length + 1:], 0.0)


def test_greedy_decoding_drops_finished_rows_and_still_gives_the_full_prefix_tokens():
  # [END] as likely as any word: some captions end at once, others run on,
  # so rows leave the batch while the others go on decoding.
  keras.utils.set_random_seed(2)
  captioner = transformer.Captioner(VOCAB, GRID, num_layers=2, units=16,
                                    num_heads=2, dropout_rate=0.1,
                                    max_length=12, label_counts=np.ones(VOCAB))
  images = tf.random.stateless_normal((8, *GRID), seed=(2, 9))
  cached, attention = captioner.decode_cached(images)
  np.testing.assert_array_equal(
      cached.numpy(),
      decoding_oracles.decode_full_prefix(captioner, images).numpy())
  lengths = (cached.numpy() != text.PAD_ID).sum(axis=1)
  assert lengths.min() < lengths.max() == 11, lengths
  # The maps through [END] are distributions; padding attends nowhere.
  sums = attention.numpy().sum(axis=-1)
  for row, length in zip(sums, lengths):
    np.testing.assert_allclose(row[:length], 1.0, atol=1e-5)
    np.testing.assert_array_equal(row[length:], 0.0)


@pytest.mark.parametrize("image_projection", [False, True])
def test_cached_step_logits_equal_the_full_forward_pass(image_projection):
  captioner = _decoding_captioner(0, image_projection)
  image, tokens = _inputs(batch=2, length=7)
  full = captioner((image, tokens)).numpy()
  cache = captioner.start_cache(tf.constant(image), 12)
  for i in range(tokens.shape[1]):
    logits, cache, _ = captioner.step(tf.constant(tokens[:, i]), i, cache)
    np.testing.assert_allclose(logits.numpy(), full[:, i], atol=1e-4)


def test_beam_search_of_width_one_is_greedy():
  captioner = _decoding_captioner(1)
  images = tf.random.stateless_normal((5, *GRID), seed=(3, 4))
  ids, log_prob = captioner.beam_search(images, beam_width=1)
  np.testing.assert_array_equal(ids.numpy(),
                                captioner.greedy_decode(images).numpy())
  np.testing.assert_allclose(
      log_prob.numpy(), captioner.sequence_log_prob(images, ids).numpy(),
      rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_stopping_early_returns_what_the_full_search_does(seed):
  captioner = _decoding_captioner(seed)
  images = tf.random.stateless_normal((8, *GRID), seed=(seed, 7))
  for width in (2, 3):
    ids, log_prob = captioner.beam_search(images, beam_width=width)
    full_ids, full_log_prob = captioner.beam_search(images, beam_width=width,
                                                    stop_early=False)
    np.testing.assert_array_equal(ids.numpy(), full_ids.numpy())
    np.testing.assert_array_equal(log_prob.numpy(), full_log_prob.numpy())


def test_beam_search_traced_with_the_batch_known_returns_the_eager_search():
  # Images settle at different steps (see the greedy test above), so the
  # batch shrinks below the size the function was traced with.
  keras.utils.set_random_seed(2)
  captioner = transformer.Captioner(VOCAB, GRID, num_layers=2, units=16,
                                    num_heads=2, dropout_rate=0.1,
                                    max_length=12, label_counts=np.ones(VOCAB))
  images = tf.random.stateless_normal((8, *GRID), seed=(2, 9))
  ids, log_prob = captioner.beam_search(images, beam_width=3)
  lengths = (ids.numpy() != text.PAD_ID).sum(axis=1)
  assert lengths.min() < lengths.max(), lengths
  traced = tf.function(lambda x: captioner.beam_search(x, beam_width=3))
  traced_ids, traced_log_prob = traced(images)  # (8, ...) static, no signature
  np.testing.assert_array_equal(traced_ids.numpy(), ids.numpy())
  np.testing.assert_allclose(traced_log_prob.numpy(), log_prob.numpy(),
                             atol=1e-5)


def _while_loops_lowered(concrete):
  """`_lower_using_switch_merge` of every While op in a traced function's
  graph, its functions included (a tf.cond's branches are functions)."""
  graph = concrete.graph.as_graph_def()
  nodes = list(graph.node) + [node for function in graph.library.function
                              for node in function.node_def]
  return [node.attr["_lower_using_switch_merge"].b for node in nodes
          if node.op in ("While", "StatelessWhile")]


def test_few_and_many_rows_decode_the_same_through_both_loops():
  # A decoder is two loops (base.decoding_loops): a lowered While while a
  # step has many rows, then a functional one for the rest (all of a small
  # batch). They must decode alike. [END] as likely as any word: rows leave
  # the batch on the way, so a large batch changes loop mid-caption.
  keras.utils.set_random_seed(2)
  captioner = transformer.Captioner(VOCAB, GRID, num_layers=2, units=16,
                                    num_heads=2, dropout_rate=0.1,
                                    max_length=12, label_counts=np.ones(VOCAB))
  many = base.FUNCTIONAL_MAX_ROWS + 2
  images = tf.random.stateless_normal((many, *GRID), seed=(4, 2))
  spec = [tf.TensorSpec([None, *GRID], tf.float32)]
  greedy = tf.function(lambda x: captioner.decode_cached(x)[0],
                       input_signature=spec)
  beam = tf.function(lambda x: captioner.beam_search(x, beam_width=3),
                     input_signature=spec)
  for decoder in (greedy, beam):
    assert sorted(_while_loops_lowered(decoder.get_concrete_function())) == [
        False, True]
  expected = decoding_oracles.decode_full_prefix(captioner, images).numpy()
  lengths = np.sort((expected != text.PAD_ID).sum(axis=1))
  # Two captions end before the longest: it finishes in the functional loop.
  assert lengths[1] < lengths[-1], lengths
  np.testing.assert_array_equal(greedy(images).numpy(), expected)   # both
  for i in range(3):                                                # functional
    np.testing.assert_array_equal(greedy(images[i:i + 1]).numpy(),
                                  expected[i:i + 1])
  assert 3 * 3 > base.FUNCTIONAL_MAX_BEAM_ROWS >= 3
  eager_ids, eager_log_prob = captioner.beam_search(images[:3], beam_width=3)
  beam_lengths = (eager_ids.numpy() != text.PAD_ID).sum(axis=1)
  assert beam_lengths.min() < beam_lengths.max(), beam_lengths
  ids, log_prob = beam(images[:3])                                  # both
  np.testing.assert_array_equal(ids.numpy(), eager_ids.numpy())
  np.testing.assert_allclose(log_prob.numpy(), eager_log_prob.numpy(),
                             atol=1e-5)
  for i in range(3):                                                # functional
    ids, log_prob = beam(images[i:i + 1])
    np.testing.assert_array_equal(ids.numpy(), eager_ids.numpy()[i:i + 1])
    np.testing.assert_allclose(log_prob.numpy(),
                               eager_log_prob.numpy()[i:i + 1], atol=1e-5)


def test_beam_search_of_width_three_finds_likelier_captions_than_greedy():
  captioner = _decoding_captioner(2)
  images = tf.random.stateless_normal((16, *GRID), seed=(5, 6))
  greedy = captioner.greedy_decode(images)
  beam, beam_log_prob = captioner.beam_search(images, beam_width=3)
  greedy_lp = captioner.sequence_log_prob(images, greedy).numpy()
  beam_lp = captioner.sequence_log_prob(images, beam).numpy()
  np.testing.assert_allclose(beam_log_prob.numpy(), beam_lp, rtol=1e-4,
                             atol=1e-4)
  assert beam_lp.mean() >= greedy_lp.mean()
  assert (beam_lp > greedy_lp + 1e-3).any(), "beam search changed nothing"
  # Every caption ends in [END] then padding, with no banned token.
  for row in beam.numpy():
    assert text.START_ID not in row and text.UNK_ID not in row


def test_the_image_projection_makes_cross_attention_work_at_units():
  plain, projected = _captioner(), _captioner(image_projection=True)
  image, tokens = _inputs()
  assert plain((image, tokens)).shape == projected((image, tokens)).shape
  key = lambda m: m.decoder_layers[0].cross_attention.mha._key_dense.kernel  # pylint: disable=protected-access
  assert key(plain).shape[0] == GRID[2]      # keys from the grid's depth
  assert key(projected).shape[0] == 16       # keys from units
  assert projected.image_projection.get_config()["units"] == 16
