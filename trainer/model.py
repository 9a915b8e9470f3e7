"""Model A: the Transformer decoder captioner of the TensorFlow tutorial.

Each layer is a small class named after what it is. Shapes in comments:
b batch, t tokens, h*w image cells, c feature channels, d model units,
v vocabulary size.

Padding: token id 0 is padding and always comes after the caption, so the
causal mask already keeps every real position from seeing a padded one; the
loss ignores padded labels. No Keras mask propagation is needed.
"""

import einops
import keras
import numpy as np
import tensorflow as tf

from core import text

# Banned tokens get this bias so they are never produced; the loss ignores
# the artificially huge losses they would otherwise carry.
BANNED_BIAS = -1e9
BANNED_TOKENS = (text.PAD_ID, text.UNK_ID, text.START_ID)
_LOSS_CEILING = 1e8


class SeqEmbedding(keras.layers.Layer):
  """Token embedding plus a learned position embedding."""

  def __init__(self, vocab_size, max_length, depth, **kwargs):
    super().__init__(**kwargs)
    self.token_embedding = keras.layers.Embedding(vocab_size, depth)
    self.pos_embedding = keras.layers.Embedding(max_length, depth)

  def call(self, seq):
    # seq: (b, t) -> (b, t, d)
    positions = tf.range(tf.shape(seq)[1])
    return self.token_embedding(seq) + self.pos_embedding(positions)[None]

  def step(self, token, i):
    # token: (b,) at position i -> (b, 1, d)
    return (self.token_embedding(token[:, None])
            + self.pos_embedding(tf.convert_to_tensor(i))[None, None])


def _attend(mha, query, key, value, mask=None):
  """Keras MultiHeadAttention on already projected (b, t, heads, k) tensors.

  Calls the layer's own attention and output projection, so a cached step
  computes exactly what the layer computes on the whole sequence.
  """
  out, scores = mha._compute_attention(  # pylint: disable=protected-access
      query, key, value, mask, training=False, return_attention_scores=True)
  return mha._output_dense(out), scores  # pylint: disable=protected-access


class CausalSelfAttention(keras.layers.Layer):

  def __init__(self, **kwargs):
    super().__init__()
    self.mha = keras.layers.MultiHeadAttention(**kwargs)
    self.layernorm = keras.layers.LayerNormalization()

  def call(self, x):
    # x: (b, t, d) -> (b, t, d)
    attn = self.mha(query=x, value=x, use_causal_mask=True)
    return self.layernorm(x + attn)

  def step(self, x, cache, i):
    """One new position i: x (b, 1, d), cache of keys and values
    {"k", "v": (b, T, heads, k)} -> (b, 1, d), the cache with position i."""
    mha = self.mha
    at_i = tf.one_hot(i, tf.shape(cache["k"])[1],
                      dtype=cache["k"].dtype)[None, :, None, None]
    cache = {
        "k": cache["k"] + at_i * mha._key_dense(x),  # pylint: disable=protected-access
        "v": cache["v"] + at_i * mha._value_dense(x),  # pylint: disable=protected-access
    }
    seen = tf.range(tf.shape(cache["k"])[1]) <= i          # (T,)
    attn, _ = _attend(mha, mha._query_dense(x), cache["k"], cache["v"],  # pylint: disable=protected-access
                      seen[None, None, :])
    return self.layernorm(x + attn), cache


class CrossAttention(keras.layers.Layer):
  """Text attends to the image grid; keeps the last attention scores."""

  def __init__(self, **kwargs):
    super().__init__()
    self.mha = keras.layers.MultiHeadAttention(**kwargs)
    self.layernorm = keras.layers.LayerNormalization()
    self.last_attention_scores = None

  def call(self, x, y):
    # x: (b, t, d) text, y: (b, h*w, c) image -> (b, t, d)
    attn, scores = self.mha(query=x, value=y, return_attention_scores=True)
    self.last_attention_scores = scores  # (b, heads, t, h*w)
    return self.layernorm(x + attn)

  def image_keys_values(self, y):
    # y: (b, h*w, c) -> the image's keys and values, (b, h*w, heads, k) each
    return {"k": self.mha._key_dense(y), "v": self.mha._value_dense(y)}  # pylint: disable=protected-access

  def step(self, x, image_kv):
    """x (b, 1, d) -> (b, 1, d) and attention scores (b, heads, 1, h*w)."""
    attn, scores = _attend(self.mha, self.mha._query_dense(x),  # pylint: disable=protected-access
                           image_kv["k"], image_kv["v"])
    return self.layernorm(x + attn), scores


class FeedForward(keras.layers.Layer):

  def __init__(self, units, dropout_rate=0.1, **kwargs):
    super().__init__(**kwargs)
    self.dense_1 = keras.layers.Dense(2 * units, activation="relu")
    self.dense_2 = keras.layers.Dense(units)
    self.dropout = keras.layers.Dropout(dropout_rate)
    self.layernorm = keras.layers.LayerNormalization()

  def call(self, x, training=False):
    # x: (b, t, d) -> (b, t, d)
    y = self.dropout(self.dense_2(self.dense_1(x)), training=training)
    return self.layernorm(x + y)


class DecoderLayer(keras.layers.Layer):

  def __init__(self, units, num_heads=1, dropout_rate=0.1, **kwargs):
    super().__init__(**kwargs)
    self.self_attention = CausalSelfAttention(
        num_heads=num_heads, key_dim=units, dropout=dropout_rate)
    self.cross_attention = CrossAttention(
        num_heads=num_heads, key_dim=units, dropout=dropout_rate)
    self.ff = FeedForward(units=units, dropout_rate=dropout_rate)

  def call(self, image, text_seq, training=False):
    # image: (b, h*w, c), text_seq: (b, t, d) -> (b, t, d)
    x = self.self_attention(text_seq, training=training)
    x = self.cross_attention(x, image, training=training)
    return self.ff(x, training=training)

  def step(self, x, cache, i):
    """x (b, 1, d) at position i -> (b, 1, d), cache, scores (b, heads, h*w)."""
    x, self_cache = self.self_attention.step(x, cache["self"], i)
    x, scores = self.cross_attention.step(x, cache["image"])
    return (self.ff(x), {"self": self_cache, "image": cache["image"]},
            scores[:, :, 0, :])


class TokenOutput(keras.layers.Layer):
  """Logits over the vocabulary; banned tokens can never win.

  The bias starts at the log unigram probability of the label tokens (the
  "smart initialization"), so the untrained loss is the marginal entropy of
  the labels rather than log(vocabulary size).
  """

  def __init__(self, vocab_size, label_counts=None, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size
    # float32 logits under mixed precision: BANNED_BIAS overflows float16.
    # A small kernel keeps the untrained logits near the bias, so the
    # untrained loss really is the label entropy (Glorot's kernel would add
    # noise of variance ~2*units/(units+v) to every logit).
    self.dense = keras.layers.Dense(
        vocab_size, dtype="float32",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        bias_initializer=keras.initializers.Constant(
            self.initial_bias(vocab_size, label_counts)))

  @staticmethod
  def initial_bias(vocab_size, label_counts=None) -> np.ndarray:
    counts = np.zeros(vocab_size, np.float64)
    if label_counts is not None:
      counts[:len(label_counts)] = label_counts[:vocab_size]
    counts[list(BANNED_TOKENS)] = 0
    total = counts.sum()
    if total > 0:
      probs = counts / total
      bias = np.log(np.where(probs > 0, probs, 1.0))
      bias[probs == 0] = BANNED_BIAS
    else:
      bias = np.zeros(vocab_size)
    bias[list(BANNED_TOKENS)] = BANNED_BIAS
    return bias.astype(np.float32)

  def call(self, x):
    # x: (b, t, d) -> (b, t, v)
    return self.dense(x)


class GreedyDecoding:
  """Decoding (greedy or sampled) mixed into every captioner: needs
  `self.max_length` and a call ((image (b, h, w, c), tokens (b, t))) ->
  logits (b, t, v)."""

  def greedy_decode(self, image, max_length=None):
    """In-graph greedy decoding: image grid (b, h, w, c) -> ids (b, t)."""
    return self.decode(image, max_length)

  def decode(self, image, max_length=None, temperature=0.0, seed=0):
    """In-graph decoding: image grid (b, h, w, c) -> ids (b, max_length - 1).

    temperature 0 is greedy; above 0, tokens are drawn from
    softmax(logits / temperature) with a stateless seed (same seed, same
    captions). Models with an incremental `step` use it (one new position per
    token); others re-run the whole prefix.
    """
    if hasattr(self, "step"):
      return self.decode_cached(image, max_length, temperature, seed)[0]
    return self.decode_full_prefix(image, max_length, temperature, seed)

  def _choose(self, logits, position, temperature, seed):
    # logits: (b, v) for the token at `position` -> ids (b,). temperature and
    # seed may be Python numbers (the choice is made while tracing) or
    # tensors (a serving input: greedy where temperature is 0).
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
    max_length - 1; every sequence stops at [END] (then padding)."""
    max_length = min(max_length or self.max_length, self.max_length)
    steps = max_length - 1
    batch = tf.shape(image)[0]
    cells = image.shape[1] * image.shape[2]
    cache = self.start_cache(image, max_length)
    ids = tf.zeros([batch, steps], tf.int64)
    attention = tf.zeros([batch, steps, cells], tf.float32)
    token = tf.fill([batch], tf.constant(text.START_ID, tf.int64))
    done = tf.zeros([batch], tf.bool)

    def step(p, token, done, ids, attention, cache):
      logits, cache, attn = self.step(token, p, cache)       # (b, v)
      next_id = self._choose(logits, p + 1, temperature, seed)
      next_id = tf.where(done, tf.zeros_like(next_id), next_id)
      at_p = tf.one_hot(p, steps)[None, :]                   # (1, T)
      ids += tf.cast(at_p, tf.int64) * next_id[:, None]
      attention += at_p[:, :, None] * tf.cast(attn, tf.float32)[:, None, :]
      return (p + 1, next_id, done | tf.equal(next_id, text.END_ID), ids,
              attention, cache)

    _, _, _, ids, attention, _ = tf.while_loop(
        lambda p, token, done, *_: (p < steps) & ~tf.reduce_all(done),
        step, (tf.constant(0), token, done, ids, attention, cache))
    return ids, attention

  def beam_search(self, image, beam_width=3, length_penalty=0.0,
                  max_length=None):
    """In-graph batched beam search with the model's cache.

    image (b, h, w, c) -> ids (b, T), log_prob (b,): the best caption per
    image and its log-probability under the model (sum over its tokens,
    [END] included). Beams are ranked by log_prob / lp(length), lp =
    ((5 + length) / 6) ** length_penalty (GNMT's; 0 ranks by log_prob). A
    finished beam ([END]) keeps its score and only grows padding.
    """
    max_length = min(max_length or self.max_length, self.max_length)
    steps, k = max_length - 1, beam_width
    batch = tf.shape(image)[0]
    cache = self.start_cache(tf.repeat(image, k, axis=0), max_length)
    vocab = self.vocab_size
    # Only beam 0 is alive at first, so the k beams start out different.
    log_prob = tf.tile(tf.concat([tf.zeros([1, 1]),
                                  tf.fill([1, k - 1], -1e9)], axis=1),
                       [batch, 1])
    ids = tf.zeros([batch, k, steps], tf.int64)
    lengths = tf.zeros([batch, k], tf.float32)
    finished = tf.zeros([batch, k], tf.bool)
    token = tf.fill([batch * k], tf.constant(text.START_ID, tf.int64))
    pad_only = tf.one_hot(text.PAD_ID, vocab, on_value=0.0, off_value=-1e9)

    def rank(log_prob, lengths):
      return log_prob / (((5.0 + lengths) / 6.0) ** tf.cast(length_penalty,
                                                           tf.float32))

    def step(p, token, log_prob, ids, lengths, finished, cache):
      logits, cache, _ = self.step(token, p, cache)          # (b*k, v)
      step_lp = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)),
                           [batch, k, vocab])
      step_lp = tf.where(finished[:, :, None], pad_only[None, None], step_lp)
      total = log_prob[:, :, None] + step_lp                  # (b, k, v)
      grown = tf.broadcast_to(                                # (b, k, v)
          (lengths + tf.where(finished, 0.0, 1.0))[:, :, None], tf.shape(total))
      score = rank(total, grown)
      _, best = tf.math.top_k(tf.reshape(score, [batch, k * vocab]), k)
      beam = best // vocab                                    # (b, k)
      new_token = tf.cast(best % vocab, tf.int64)
      log_prob = tf.gather(tf.reshape(total, [batch, k * vocab]), best,
                           batch_dims=1)
      lengths = tf.gather(tf.reshape(grown, [batch, k * vocab]), best,
                          batch_dims=1)
      was_finished = tf.gather(finished, beam, batch_dims=1)
      finished = was_finished | tf.equal(new_token, text.END_ID)
      at_p = tf.cast(tf.one_hot(p, steps), tf.int64)[None, None, :]
      ids = tf.gather(ids, beam, batch_dims=1) + at_p * new_token[:, :, None]
      flat = tf.reshape(beam + k * tf.range(batch)[:, None], [-1])
      cache = tf.nest.map_structure(lambda t: tf.gather(t, flat), cache)
      return (p + 1, tf.reshape(new_token, [-1]), log_prob, ids, lengths,
              finished, cache)

    _, _, log_prob, ids, lengths, _, _ = tf.while_loop(
        lambda p, token, log_prob, ids, lengths, finished, cache: (
            (p < steps) & ~tf.reduce_all(finished)),
        step, (tf.constant(0), token, log_prob, ids, lengths, finished,
               cache))
    best = tf.argmax(rank(log_prob, lengths), axis=1, output_type=tf.int32)
    return (tf.gather(ids, best, batch_dims=1),
            tf.gather(log_prob, best, batch_dims=1))

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

  def decode_full_prefix(self, image, max_length=None, temperature=0.0,
                         seed=0):
    """The tutorial's way, in the graph: re-run the model on the whole
    prefix (a fixed-size buffer; the causal mask hides the unused tail) for
    every new token. The reference the cached decoder must equal."""
    max_length = min(max_length or self.max_length, self.max_length)
    batch = tf.shape(image)[0]
    tokens = tf.concat(
        [tf.fill([batch, 1], tf.constant(text.START_ID, tf.int64)),
         tf.zeros([batch, max_length - 1], tf.int64)], axis=1)
    done = tf.zeros([batch], tf.bool)

    def step(i, tokens, done):
      logits = self((image, tokens), training=False)       # (b, T, v)
      next_id = self._choose(logits[:, i - 1, :], i, temperature, seed)
      next_id = tf.where(done, tf.zeros_like(next_id), next_id)
      tokens = tf.tensor_scatter_nd_update(
          tokens, tf.stack([tf.range(batch), tf.fill([batch], i)], axis=1),
          next_id)
      return i + 1, tokens, done | tf.equal(next_id, text.END_ID)

    _, tokens, _ = tf.while_loop(
        lambda i, tokens, done: (i < max_length) & ~tf.reduce_all(done),
        step, (tf.constant(1), tokens, done))
    return tokens[:, 1:]


class ImageProjection(keras.layers.Layer):
  """The grid's cells projected to the decoder's width once, so that every
  layer's cross-attention keys and values start from `units`, not from the
  CNN's depth (1280 for MobileNetV2: there they cost most of a step)."""

  def __init__(self, units, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.dense = keras.layers.Dense(units, activation="relu")
    self.layernorm = keras.layers.LayerNormalization()

  def call(self, cells):
    # cells: (b, h*w, c) -> (b, h*w, units)
    return self.layernorm(self.dense(cells))

  def get_config(self):
    return {**super().get_config(), "units": self.units}


class Captioner(GreedyDecoding, keras.Model):
  """(image grid (b, h, w, c), tokens (b, t)) -> next-token logits (b, t, v)."""

  def __init__(self, vocab_size, grid, num_layers=2, units=256, num_heads=2,
               dropout_rate=0.5, max_length=50, image_position_embedding=True,
               label_counts=None, image_projection=False, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size
    self.grid = tuple(int(g) for g in grid)
    self.max_length = max_length
    h, w, c = self.grid
    self.image_projection = (ImageProjection(units) if image_projection
                             else None)
    # Positions are added after the projection, at the width attended over.
    depth = units if image_projection else c
    self.image_positions = (keras.layers.Embedding(h * w, depth)
                            if image_position_embedding else None)
    self.seq_embedding = SeqEmbedding(vocab_size, max_length, units)
    self.decoder_layers = [
        DecoderLayer(units, num_heads=num_heads, dropout_rate=dropout_rate)
        for _ in range(num_layers)]
    self.output_layer = TokenOutput(vocab_size, label_counts)

  def image_cells(self, image):
    # (b, h, w, c) -> (b, h*w, c), with the cells' position embedding;
    # float16 under mixed precision, like the embedding.
    image = einops.rearrange(tf.cast(image, self.compute_dtype),
                             "b h w c -> b (h w) c")
    if self.image_projection is not None:
      image = self.image_projection(image)                 # (b, h*w, d)
    if self.image_positions is not None:
      image = image + self.image_positions(tf.range(tf.shape(image)[1]))[None]
    return image

  def call(self, inputs, training=False):
    image, tokens = inputs
    image = self.image_cells(image)                        # (b, h*w, c)
    x = self.seq_embedding(tokens)                         # (b, t, d)
    for layer in self.decoder_layers:
      x = layer(image, x, training=training)
    return self.output_layer(x)                            # (b, t, v)

  def start_cache(self, image, max_length):
    """Per layer: empty self-attention keys/values for max_length positions
    and the image's cross-attention keys/values, computed once."""
    batch = tf.shape(image)[0]
    if not self.decoder_layers[0].cross_attention.mha.built:
      # The attention layers create their projections on a first call.
      self((image, tf.fill([batch, 1], tf.constant(text.START_ID, tf.int64))))
    cells = self.image_cells(image)
    caches = []
    for layer in self.decoder_layers:
      mha = layer.self_attention.mha
      zeros = lambda dim: tf.zeros(  # pylint: disable=cell-var-from-loop
          [batch, max_length, mha.num_heads, dim], self.compute_dtype)
      caches.append({
          "self": {"k": zeros(mha.key_dim),
                   "v": zeros(mha.value_dim or mha.key_dim)},
          "image": layer.cross_attention.image_keys_values(cells)})
    return caches

  def step(self, token, i, cache):
    """token (b,) at position i -> next-token logits (b, v), the cache, and
    the cross-attention map (b, h*w) averaged over heads and layers."""
    x = self.seq_embedding.step(token, i)                  # (b, 1, d)
    new_cache, maps = [], []
    for layer, layer_cache in zip(self.decoder_layers, cache):
      x, layer_cache, scores = layer.step(x, layer_cache, i)
      new_cache.append(layer_cache)
      maps.append(scores)                                  # (b, heads, h*w)
    attention = einops.reduce(tf.stack(maps), "l b n s -> b s", "mean")
    return self.output_layer(x)[:, 0, :], new_cache, attention


def masked_loss(labels, logits):
  """Sparse cross-entropy over real (non-padding) label tokens."""
  loss = keras.losses.sparse_categorical_crossentropy(
      labels, logits, from_logits=True)
  mask = tf.cast((labels != text.PAD_ID) & (loss < _LOSS_CEILING), loss.dtype)
  return tf.reduce_sum(loss * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def masked_accuracy(labels, logits):
  """Share of real label tokens predicted exactly."""
  predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
  mask = tf.cast(labels != text.PAD_ID, tf.float32)
  hits = tf.cast(predicted == labels, tf.float32) * mask
  return tf.reduce_sum(hits) / tf.maximum(tf.reduce_sum(mask), 1.0)
