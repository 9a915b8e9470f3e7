"""The base class of every captioner: it owns decoding.

After ruotianluo/ImageCaptioning.pytorch's CaptionModel: each model family
(transformer.py, show_attend_tell.py, patch_transformer.py) provides only

  image_cells(image (b, h, w, c))   the encoded image its decoder reads,
  call((image, tokens (b, t)))      next-token logits (b, t, v), teacher
                                    forced (training and scoring),
  start_cache(image, max_length)    the decoding state of a batch of images
                                    (keys and values, or a recurrent state),
  step(token (b,), i, cache)        one new position: logits (b, v), the
                                    cache, an attention map (b, h*w);

and this class decodes with them, in the graph: greedy, sampled (temperature
and a stateless seed), beam search, and the log-probability of a caption.
Every decoder runs the cached step loop, one new position per token. A
family may also override `decoding_step` (the step a loop calls, with the
weights read once before it), `cache_shapes`, `reorder_cache`, and
`start_beam_cache` with `select_beams_cache` (beam search's cache, where
the beams of an image share parts of it). Each decoder's loop is two in
sequence, for many rows and then for few (`decoding_loops`).
"""

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

from core import text

# Up to how many rows a decoding step runs functional (`decoding_loops`):
# the crossovers measured on the Flickr8k model (BENCHMARKS.md, "Decoding",
# run 14), greedy at 16 images and beam search (3 rows an image) at 2.
FUNCTIONAL_MAX_ROWS = 16
FUNCTIONAL_MAX_BEAM_ROWS = 6


# The decoders' tf.while_loop: their body functions' names contain
# LOOP_NAME + "_body" (benchmarks/loop_ops.py finds them so).
LOOP_NAME = "decoding_loop"


# The attribute by which TF lowers a While op into its caller's graph
# (Switch, Merge: control_flow_util_v2.maybe_set_lowering_attr); false, the
# op stays a functional While.
_LOWER_ATTR = "_lower_using_switch_merge"


def _functional_while_loop(*args, **kwargs):
  """tf.while_loop(*args, **kwargs), its While op left functional: it runs
  its body as a function of its own. Set on the op itself, not through TF's
  module-wide switch, which another thread tracing meanwhile would read."""
  if tf.executing_eagerly():
    return tf.while_loop(*args, **kwargs)
  graph = tf.compat.v1.get_default_graph()
  made_before = len(graph.get_operations())
  outputs = tf.while_loop(*args, **kwargs)
  for op in graph.get_operations()[made_before:]:
    if op.type in ("While", "StatelessWhile"):
      op._set_attr(_LOWER_ATTR, attr_value_pb2.AttrValue(b=False))  # pylint: disable=protected-access
  return outputs


def decoding_loops(should_continue, rows, functional_max_rows, step,
                   loop_vars, shape_invariants):
  """A decoder's tf.while_loop as two: lowered while a step decodes more
  than `functional_max_rows` rows (`rows` counts them from the loop's
  state), then functional for the rest, from where the first stopped. A
  batch that starts small runs only the second; one whose rows leave as
  they finish (greedy captions, settled beam-search images) changes loop on
  the way.

  Why both: TF's oneDNN passes rewrite the matmuls and softmaxes of the
  graph a function runs, a lowered loop's body included, but not the body
  of a functional While, which runs as a function of its own on TF's Eigen
  kernels. At a few rows a step oneDNN's per-call cost dominates (65-175 us
  a matmul or softmax in a traced batch-1 beam search, 20 of its 25 ms):
  functional, batch 1 decodes 1.5x (greedy) and 1.3x (beam 3) faster; at
  32 images oneDNN is faster (beam 3 1.6x). The ops are the same; the
  kernels may round differently (the captions agreed in the tests and on
  the benchmark's photos).
  """
  many = lambda *state: should_continue(*state) & (
      rows(*state) > functional_max_rows)
  state = tf.while_loop(many, step, loop_vars,
                        shape_invariants=shape_invariants, name=LOOP_NAME)
  return _functional_while_loop(should_continue, step, state,
                                shape_invariants=shape_invariants,
                                name=LOOP_NAME)


class CaptionModel(keras.Model):
  """(image grid (b, h, w, c), tokens (b, t)) -> next-token logits (b, t, v),
  with `vocab_size`, `grid` (h, w, c) and `max_length` (of a caption with
  [START], so decoders emit at most max_length - 1 tokens)."""

  def __init__(self, vocab_size, grid, max_length=50, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size
    self.grid = tuple(int(g) for g in grid)
    self.max_length = max_length

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size,
            "grid": list(self.grid), "max_length": self.max_length}

  # What a model family provides (besides `call`).

  def image_cells(self, image, training=False):
    """image (b, h, w, c) -> what the decoder attends to, (b, h*w, d)."""
    raise NotImplementedError

  def start_cache(self, image, max_length):
    """image (b, h, w, c) -> the decoding state (a nest of tensors whose
    first axis is the batch) before the first token."""
    raise NotImplementedError

  def step(self, token, i, cache):
    """token (b,) at position i -> next-token logits (b, v), the cache, and
    the attention over the cells (b, h*w)."""
    raise NotImplementedError

  def decoding_step(self):
    """The step function (token, i, cache) a decoding loop calls: `step`
    by default. Called once per decode, before the loop, after
    start_cache: a family may read its weights here and return a step that
    uses them (a loop body that reads a variable reads it again at every
    step)."""
    return self.step

  def cache_shapes(self, cache):
    """The cache's shape invariants in a decoding loop: the batch axis
    unknown (finished rows leave the batch). A family whose cache grows per
    step (the Transformer's keys and values) or keeps its batch on another
    axis overrides this."""
    return tf.nest.map_structure(
        lambda t: tf.TensorShape([None]).concatenate(t.shape[1:]), cache)

  def select_cache(self, cache, indices):
    """The whole cache of the rows `indices` (greedy decoding keeps the rows
    still decoding)."""
    return tf.nest.map_structure(lambda t: tf.gather(t, indices), cache)

  def start_beam_cache(self, image, beam_width, max_length):
    """The decoding state of `beam_width` beams per image, rows image-major
    (row i * beam_width + j is beam j of image i): by default `start_cache`
    of each image repeated per beam. A family whose cache has parts that
    every beam of an image shares overrides this to keep one copy of them
    (with `select_beams_cache`)."""
    return self.start_cache(tf.repeat(image, beam_width, axis=0), max_length)

  def select_beams_cache(self, cache, images, rows):
    """The cache of the images `images`, whose beams are the rows `rows`
    (beam search drops the images it has settled)."""
    del images
    return self.select_cache(cache, rows)

  def reorder_cache(self, cache, indices):
    """The cache of the rows `indices` (beam search's surviving beams). A
    family whose cache has parts that every beam of an image shares (the
    image's keys and values) overrides this to keep those parts as they are:
    gathering them would copy them at every step for nothing."""
    return tf.nest.map_structure(lambda t: tf.gather(t, indices), cache)

  # Decoding.

  def greedy_decode(self, image, max_length=None):
    """In-graph greedy decoding: image grid (b, h, w, c) -> ids (b, t)."""
    return self.decode(image, max_length)

  def decode(self, image, max_length=None, temperature=0.0, seed=0):
    """In-graph decoding: image grid (b, h, w, c) -> ids (b, max_length - 1).

    temperature 0 is greedy; above 0, tokens are drawn from
    softmax(logits / temperature) with a stateless seed (same seed, same
    captions). One cached `step` per token.
    """
    return self.decode_cached(image, max_length, temperature, seed)[0]

  def choose_token(self, logits, position, temperature, seed):
    """logits (b, v) for the token at `position` -> ids (b,). temperature and
    seed may be Python numbers (the choice is made while tracing) or tensors
    (a serving input: greedy where temperature is 0)."""
    fixed = isinstance(temperature, (int, float))
    if fixed and temperature == 0.0:
      return tf.argmax(logits, axis=-1, output_type=tf.int64)
    temperature = tf.cast(temperature, tf.float32)
    sampled = tf.random.stateless_categorical(
        tf.cast(logits, tf.float32) / tf.maximum(temperature, 1e-6), 1,
        seed=tf.stack([tf.cast(seed, tf.int32), position]),
        dtype=tf.int64)[:, 0]
    if fixed:
      return sampled
    return tf.where(temperature > 0.0, sampled,
                    tf.argmax(logits, axis=-1, output_type=tf.int64))

  def decode_cached(self, image, max_length=None, temperature=0.0, seed=0):
    """Incremental decoding with the model's cache (keys and values, or a
    recurrent state): ids (b, T) and attention maps (b, T, h*w), T =
    max_length - 1; every sequence stops at [END] (then padding, whose
    attention maps are zero).

    Greedy decoding (temperature a Python 0) drops a caption's row from the
    batch once it has [END]: its later tokens are padding, and at batch 32
    one caption that never ends would otherwise keep all 32 rows decoding
    to max_length. Sampling keeps every row (stateless_categorical draws by
    row, so dropping rows would change the other rows' draws).
    """
    max_length = min(max_length or self.max_length, self.max_length)
    steps = max_length - 1
    batch = tf.shape(image)[0]
    cells = image.shape[1] * image.shape[2]
    cache = self.start_cache(image, max_length)
    decoding_step = self.decoding_step()
    drops_finished = (isinstance(temperature, (int, float))
                      and temperature == 0.0)
    # Per step, the ids and maps of the rows still decoding and which rows
    # those are; scattered into (b, T) at the end.
    written = lambda dtype, *inner: tf.TensorArray(
        dtype, size=0, dynamic_size=True, infer_shape=False,
        element_shape=tf.TensorShape([None, *inner]))
    outputs = {"rows": written(tf.int32), "positions": written(tf.int32),
               "ids": written(tf.int64),
               "attention": written(tf.float32, cells)}
    token = tf.fill([batch], tf.constant(text.START_ID, tf.int64))
    rows = tf.range(batch)
    done = tf.zeros([batch], tf.bool)

    def step(p, token, rows, done, cache, outputs):
      logits, cache, attn = decoding_step(token, p, cache)   # (n, v)
      next_id = self.choose_token(logits, p + 1, temperature, seed)
      next_id = tf.where(done, tf.zeros_like(next_id), next_id)
      attn = tf.where(done[:, None], 0.0, tf.cast(attn, tf.float32))
      outputs = {
          "rows": outputs["rows"].write(p, rows),
          "positions": outputs["positions"].write(p, tf.fill(tf.shape(rows),
                                                             p)),
          "ids": outputs["ids"].write(p, next_id),
          "attention": outputs["attention"].write(p, attn)}
      done |= tf.equal(next_id, text.END_ID)
      if drops_finished:
        def keep_live():
          live = tf.where(~done)[:, 0]
          return (tf.gather(next_id, live), tf.gather(rows, live),
                  tf.gather(done, live), self.select_cache(cache, live))
        next_id, rows, done, cache = tf.cond(
            tf.reduce_any(done), keep_live,
            lambda: (next_id, rows, done, cache))
      return p + 1, next_id, rows, done, cache, outputs

    loop_vars = (tf.constant(0), token, rows, done, cache, outputs)
    shapes = (tf.TensorShape([]), tf.TensorShape([None]),
              tf.TensorShape([None]), tf.TensorShape([None]),
              self.cache_shapes(cache),
              tf.nest.map_structure(lambda _: tf.TensorShape(None), outputs))

    written = decoding_loops(
        lambda p, token, rows, done, *_: (p < steps) & ~tf.reduce_all(done),
        lambda p, token, rows, *_: tf.size(rows), FUNCTIONAL_MAX_ROWS, step,
        loop_vars, shapes)[-1]
    where = tf.stack([written["rows"].concat(),
                      written["positions"].concat()], axis=1)
    return (tf.scatter_nd(where, written["ids"].concat(), [batch, steps]),
            tf.scatter_nd(where, written["attention"].concat(),
                          [batch, steps, cells]))

  def beam_search(self, image, beam_width=3, length_penalty=0.0,
                  max_length=None, stop_early=True):
    """In-graph batched beam search with the model's cache.

    image (b, h, w, c) -> ids (b, T), log_prob (b,): the best caption per
    image and its log-probability under the model (sum over its tokens,
    [END] included). Beams are ranked by log_prob / lp(length), lp =
    ((5 + length) / 6) ** length_penalty (GNMT's; 0 ranks by log_prob). A
    finished beam ([END]) keeps its score and only grows padding. An image
    leaves the batch once its result can no longer change (see `settled`),
    its beams' rows with it; the loop ends when no image is left.
    """
    max_length = min(max_length or self.max_length, self.max_length)
    steps, k = max_length - 1, beam_width
    batch = tf.shape(image)[0]
    cache = self.start_beam_cache(image, k, max_length)
    decoding_step = self.decoding_step()
    vocab = self.vocab_size
    # Only beam 0 is alive at first, so the k beams start out different.
    log_prob = tf.tile(tf.concat([tf.zeros([1, 1]),
                                  tf.fill([1, k - 1], -1e9)], axis=1),
                       [batch, 1])
    ids = tf.zeros([batch, k, 0], tf.int64)      # grows by a token a step
    lengths = tf.zeros([batch, k], tf.float32)
    finished = tf.zeros([batch, k], tf.bool)
    token = tf.fill([batch * k], tf.constant(text.START_ID, tf.int64))
    images = tf.range(batch)                     # the images still searched
    pad_only = tf.one_hot(text.PAD_ID, vocab, on_value=0.0, off_value=-1e9)
    # The settled images' results, scattered into (b, T) and (b,) at the end.
    written = lambda dtype, *inner: tf.TensorArray(
        dtype, size=0, dynamic_size=True, infer_shape=False,
        element_shape=tf.TensorShape([None, *inner]))
    results = {"images": written(tf.int32), "ids": written(tf.int64, steps),
               "log_prob": written(tf.float32)}

    def penalty(lengths):
      return ((5.0 + lengths) / 6.0) ** tf.cast(length_penalty, tf.float32)

    def rank(log_prob, lengths):
      return log_prob / penalty(lengths)

    # An image is settled when its search can no longer change: every beam
    # finished, or (length_penalty <= 0) a finished beam ranks strictly above
    # every live one. A live beam's rank only falls as it grows (each token
    # adds a log-probability <= 0, and the penalty never lifts a negative
    # score when its exponent is <= 0), so neither it nor its children can
    # overtake that beam: stopping then returns what the full search does,
    # without the steps of beams that are bound to lose.
    # stop_early=False searches until every beam finished (the tests compare).
    exact_bound = (tf.cast(length_penalty, tf.float32) <= 0.0) & stop_early

    def settled(log_prob, lengths, finished):
      score = rank(log_prob, lengths)
      best_finished = tf.reduce_max(tf.where(finished, score, -np.inf), 1)
      best_live = tf.reduce_max(tf.where(finished, -np.inf, score), 1)
      return tf.reduce_all(finished, axis=1) | (
          exact_bound & (best_finished > best_live))

    def write(results, where, images, log_prob, ids, lengths):
      """Appends the best beam of the images at `where` (its ids padded to
      T) to the results."""
      at = results["images"].size()
      # Gathers by batch_dims, not (row, beam) pairs stacked with a range
      # over the rows: that range is sized from a shape, and with the batch
      # known when traced, grappler folded it to the first step's rows.
      best = tf.argmax(rank(log_prob, lengths), axis=1, output_type=tf.int32)
      best_ids = tf.gather(tf.gather(ids, best, batch_dims=1), where)  # (s, p)
      return {"images": results["images"].write(at, tf.gather(images, where)),
              "ids": results["ids"].write(
                  at, tf.pad(best_ids, [[0, 0], [0, steps - tf.shape(ids)[2]]])),
              "log_prob": results["log_prob"].write(
                  at, tf.gather(tf.gather(log_prob, best, batch_dims=1),
                                where))}

    def step(p, token, log_prob, ids, lengths, finished, images, cache,
             results):
      n = tf.shape(images)[0]
      logits, cache, _ = decoding_step(token, p, cache)      # (n*k, v)
      step_lp = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)),
                           [n, k, vocab])
      step_lp = tf.where(finished[:, :, None], pad_only[None, None], step_lp)
      total = log_prob[:, :, None] + step_lp                  # (n, k, v)
      # Every token of a beam grows it alike: its length and length
      # penalty are per beam (n, k), broadcast over the vocabulary.
      grown = lengths + tf.where(finished, 0.0, 1.0)          # (n, k)
      score = total / penalty(grown)[:, :, None]
      _, best = tf.math.top_k(tf.reshape(score, [n, k * vocab]), k)
      beam = best // vocab                                    # (n, k)
      new_token = tf.cast(best % vocab, tf.int64)
      log_prob = tf.gather(tf.reshape(total, [n, k * vocab]), best,
                           batch_dims=1)
      lengths = tf.gather(grown, beam, batch_dims=1)
      was_finished = tf.gather(finished, beam, batch_dims=1)
      finished = was_finished | tf.equal(new_token, text.END_ID)
      ids = tf.concat([tf.gather(ids, beam, batch_dims=1),
                       new_token[:, :, None]], axis=2)        # (n, k, p+1)
      cache = self.reorder_cache(
          cache, tf.reshape(beam + k * tf.range(n)[:, None], [-1]))
      token = tf.reshape(new_token, [-1])
      done = settled(log_prob, lengths, finished) | (p + 1 >= steps)

      def drop_settled():
        live = tf.cast(tf.where(~done)[:, 0], tf.int32)
        rows = tf.reshape(live[:, None] * k + tf.range(k), [-1])
        return (tf.gather(token, rows), tf.gather(log_prob, live),
                tf.gather(ids, live), tf.gather(lengths, live),
                tf.gather(finished, live), tf.gather(images, live),
                self.select_beams_cache(cache, live, rows),
                write(results, tf.cast(tf.where(done)[:, 0], tf.int32),
                      images, log_prob, ids, lengths))

      return (p + 1, *tf.cond(
          tf.reduce_any(done), drop_settled,
          lambda: (token, log_prob, ids, lengths, finished, images, cache,
                   results)))

    loop_vars = (tf.constant(0), token, log_prob, ids, lengths, finished,
                 images, cache, results)
    shapes = (tf.TensorShape([]), tf.TensorShape([None]),
              tf.TensorShape([None, None]), tf.TensorShape([None, None, None]),
              tf.TensorShape([None, None]), tf.TensorShape([None, None]),
              tf.TensorShape([None]),
              self.cache_shapes(cache),
              tf.nest.map_structure(lambda _: tf.TensorShape(None), results))

    written = decoding_loops(
        lambda p, token, log_prob, ids, lengths, finished, images, *_: (
            (p < steps) & (tf.size(images) > 0)),
        lambda p, token, *_: tf.size(token), FUNCTIONAL_MAX_BEAM_ROWS, step,
        loop_vars, shapes)[-1]
    where = written["images"].concat()[:, None]
    return (tf.scatter_nd(where, written["ids"].concat(), [batch, steps]),
            tf.scatter_nd(where, written["log_prob"].concat(), [batch]))

  def sequence_log_prob(self, image, ids):
    """Log-probability under the model of captions ids (b, T) (padding after
    [END] ignored): the teacher-forced sum of the tokens' log-softmax."""
    batch = tf.shape(ids)[0]
    start = tf.fill([batch, 1], tf.constant(text.START_ID, tf.int64))
    inputs = tf.concat([start, ids[:, :-1]], axis=1)
    log_probs = tf.nn.log_softmax(
        tf.cast(self((image, inputs), training=False), tf.float32))
    picked = tf.gather(log_probs, ids, batch_dims=2)          # (b, T)
    return tf.reduce_sum(tf.where(ids != text.PAD_ID, picked, 0.0), axis=1)
