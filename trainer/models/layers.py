"""The layers the captioners share, each a small class named for what it is.

Shapes in comments: b batch, t tokens, S the positions attended over, h*w
image cells, c feature channels, d model units, k key (or value) units
per head, v vocabulary size.

Padding: token id 0 is padding and always comes after the caption, so the
causal mask already keeps every real position from seeing a padded one; the
loss ignores padded labels. No Keras mask propagation is needed.

Every layer has `get_config` (its constructor arguments), so Keras can
rebuild it with `from_config`.
"""

import keras
import numpy as np
import tensorflow as tf

from core import text

# Banned tokens get this bias so they are never produced; the loss ignores
# the artificially huge losses they would otherwise carry.
BANNED_BIAS = -1e9
BANNED_TOKENS = (text.PAD_ID, text.UNK_ID, text.START_ID)

_PACKAGE = "captioner"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SeqEmbedding(keras.layers.Layer):
  """Token embedding plus a learned position embedding."""

  def __init__(self, vocab_size, max_length, depth, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size
    self.max_length = max_length
    self.depth = depth
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

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size,
            "max_length": self.max_length, "depth": self.depth}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CachedMultiHeadAttention(keras.layers.MultiHeadAttention):
  """Keras' MultiHeadAttention that can also attend from a key/value cache
  (after keras_hub's CachedMultiHeadAttention).

  Without `cache` it is the stock layer. With `cache` {"k", "v": (b, heads,
  S, k)} (heads before positions: the layout batched matmul reads, so no
  step transposes the cache) the query attends over the cached keys and
  values:
    cache_update_index None: the cache as it is (e.g. the image's keys and
      values, projected once by `key_value_cache`);
    cache_update_index i: the cache holds positions 0..i-1 (S = i); the key
      and value of this call's `value` (b, 1, d) are appended as position i
      and the query attends over positions 0..i, all the causal mask would
      let it see.
  The self-attention cache grows by one position a step, as GPT-2's `past`
  did in TensorFlow, rather than being a max_length buffer written in place
  (keras_hub's `slice_update`): without XLA, TensorFlow has no in-place
  update of a slice, and a scatter into the buffer is a dozen index ops per
  write, while a concat is one op that moves only the positions there are
  (beam search also reorders only those). A decoding loop declares the
  position axis as growing (`TransformerDecoderCaptioner.cache_shapes`).
  It then returns (output, cache) or, with return_attention_scores,
  (output, scores (b, heads, t, S), cache). The math is the stock layer's
  explicit path (`_compute_attention` as the full-sequence call runs it with
  dropout: projections, query scaled by 1/sqrt(key_dim), softmax, weighted
  values, `_output_dense`) with its einsums as batched matmuls, so a cached
  step computes what the layer computes on the whole sequence, up to float
  rounding.
  """

  def call(self, query, value=None, key=None, attention_mask=None,
           return_attention_scores=False, training=None,
           use_causal_mask=False, cache=None, cache_update_index=None,
           **kwargs):
    if cache is None:
      if cache_update_index is not None:
        raise ValueError("cache_update_index needs a cache")
      return super().call(
          query, value, key=key, attention_mask=attention_mask,
          return_attention_scores=return_attention_scores, training=training,
          use_causal_mask=use_causal_mask, **kwargs)
    keys, values = cache["k"], cache["v"]
    if cache_update_index is not None:
      update = self.key_value_cache(value, key)              # (b, heads, 1, k)
      keys = tf.concat([keys, update["k"]], axis=2)          # (b, heads, i+1, k)
      values = tf.concat([values, update["v"]], axis=2)
      cache = {"k": keys, "v": values}
    q = self._query_dense(query)                             # (b, t, heads, k)
    q = tf.transpose(q * tf.cast(self._inverse_sqrt_key_dim, q.dtype),
                     [0, 2, 1, 3])                           # (b, heads, t, k)
    scores = self._masked_softmax(tf.matmul(q, keys, transpose_b=True),
                                  attention_mask)            # (b, heads, t, S)
    output = tf.transpose(tf.matmul(scores, values), [0, 2, 1, 3])
    output = self._output_dense(output)
    if return_attention_scores:
      return output, scores, cache
    return output, cache

  def key_value_cache(self, value, key=None):
    # value (b, S, c), key (default value) -> {"k", "v": (b, heads, S, k)}
    key = value if key is None else key
    heads_first = lambda t: tf.transpose(t, [0, 2, 1, 3])
    return {"k": heads_first(self._key_dense(key)),
            "v": heads_first(self._value_dense(value))}

  def empty_cache(self, batch, dtype):
    # -> {"k", "v": (batch, heads, 0, k)}: no position yet, one appended
    # per step.
    empty = lambda dim: tf.zeros([batch, self.num_heads, 0, dim], dtype)
    return {"k": empty(self.key_dim), "v": empty(self.value_dim or
                                                 self.key_dim)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResidualAttention(keras.layers.Layer):
  """Cached multi-head attention, then the residual and a LayerNorm: what the
  decoder's self- and cross-attention share."""

  def __init__(self, num_heads, key_dim, dropout=0.0, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.key_dim = key_dim
    self.dropout = dropout
    self.mha = CachedMultiHeadAttention(num_heads=num_heads, key_dim=key_dim,
                                        dropout=dropout)
    self.layernorm = keras.layers.LayerNormalization()

  def get_config(self):
    return {**super().get_config(), "num_heads": self.num_heads,
            "key_dim": self.key_dim, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CausalSelfAttention(ResidualAttention):
  """Each token attends to itself and the tokens before it; residual,
  LayerNorm."""

  def call(self, x):
    # x: (b, t, d) -> (b, t, d)
    attn = self.mha(query=x, value=x, use_causal_mask=True)
    return self.layernorm(x + attn)

  def empty_cache(self, batch, dtype):
    return self.mha.empty_cache(batch, dtype)

  def step(self, x, cache, i):
    """One new position i: x (b, 1, d), cache of keys and values
    {"k", "v": (b, heads, i, k)} -> (b, 1, d), the cache with position i
    appended. The step attends over positions 0..i, all it may see: no
    mask."""
    attn, cache = self.mha(query=x, value=x, cache=cache,
                           cache_update_index=i, training=False)
    return self.layernorm(x + attn), cache


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CrossAttention(ResidualAttention):
  """Text attends to the image grid; keeps the last attention scores."""

  def __init__(self, num_heads, key_dim, dropout=0.0, **kwargs):
    super().__init__(num_heads, key_dim, dropout, **kwargs)
    self.last_attention_scores = None

  def call(self, x, y):
    # x: (b, t, d) text, y: (b, h*w, c) image -> (b, t, d)
    attn, scores = self.mha(query=x, value=y, return_attention_scores=True)
    self.last_attention_scores = scores  # (b, heads, t, h*w)
    return self.layernorm(x + attn)

  def image_keys_values(self, y):
    # y: (b, h*w, c) -> the image's keys and values, (b, heads, h*w, k) each
    return self.mha.key_value_cache(y)

  def step(self, x, image_kv):
    """x (b, 1, d) -> (b, 1, d) and attention scores (b, heads, 1, h*w)."""
    attn, scores, _ = self.mha(query=x, cache=image_kv,
                               return_attention_scores=True, training=False)
    return self.layernorm(x + attn), scores


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FeedForward(keras.layers.Layer):
  """Dense(2 * units, relu), Dense(units), dropout; residual, LayerNorm."""

  def __init__(self, units, dropout_rate=0.1, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.dropout_rate = dropout_rate
    self.dense_1 = keras.layers.Dense(2 * units, activation="relu")
    self.dense_2 = keras.layers.Dense(units)
    self.dropout = keras.layers.Dropout(dropout_rate)
    self.layernorm = keras.layers.LayerNormalization()

  def call(self, x, training=False):
    # x: (b, t, d) -> (b, t, d)
    y = self.dropout(self.dense_2(self.dense_1(x)), training=training)
    return self.layernorm(x + y)

  def get_config(self):
    return {**super().get_config(), "units": self.units,
            "dropout_rate": self.dropout_rate}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DecoderLayer(keras.layers.Layer):
  """Causal self-attention, cross-attention to the image, feed-forward."""

  def __init__(self, units, num_heads=1, dropout_rate=0.1, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.num_heads = num_heads
    self.dropout_rate = dropout_rate
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

  def start_cache(self, image):
    """image (b, h*w, c) -> {"self": keys/values of no position yet (one is
    appended per step), "image": the image's keys/values, computed once}."""
    return {"self": self.self_attention.empty_cache(
                tf.shape(image)[0], self.compute_dtype),
            "image": self.cross_attention.image_keys_values(image)}

  def step(self, x, cache, i):
    """x (b, 1, d) at position i -> (b, 1, d), cache, scores (b, heads, h*w)."""
    x, self_cache = self.self_attention.step(x, cache["self"], i)
    x, scores = self.cross_attention.step(x, cache["image"])
    return (self.ff(x), {"self": self_cache, "image": cache["image"]},
            scores[:, :, 0, :])

  def get_config(self):
    return {**super().get_config(), "units": self.units,
            "num_heads": self.num_heads, "dropout_rate": self.dropout_rate}


def counts_config(label_counts):
  """label_counts (array, list or None) as a JSON-friendly list for
  get_config."""
  if label_counts is None:
    return None
  return [float(c) for c in np.asarray(label_counts).ravel()]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenOutput(keras.layers.Layer):
  """Logits over the vocabulary; banned tokens can never win.

  The bias starts at the log unigram probability of the label tokens (the
  "smart initialization"), so the untrained loss is the marginal entropy of
  the labels rather than log(vocabulary size).
  """

  def __init__(self, vocab_size, label_counts=None, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size
    self.label_counts = label_counts
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

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size,
            "label_counts": counts_config(self.label_counts)}
