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


# The decoding step. A decoding loop's body that calls a Keras layer reads
# its variables again at every step and reshapes around every 3-D matmul
# (EinsumDense, Dense on (b, 1, d)): at batch 1 a step is per-op dispatch,
# not arithmetic. So each layer also has `step_weights()`, its variables
# read once before the loop as 2-D kernels (the loop captures them as
# constants of every iteration), and a `step` on 2-D (b, d) rows that uses
# them: the same math as `call` at one position, up to float rounding.

def flat_dense_weights(dense, dtype, input_axes=1):
  """A Dense or EinsumDense layer's kernel (*inputs, *outputs) as (inputs,
  outputs) and its bias as (outputs,), read once and cast to `dtype`;
  input_axes: how many of the kernel's axes are the input's."""
  kernel = tf.cast(dense.kernel, dtype)
  bias = tf.cast(dense.bias, dtype)
  inputs = int(np.prod(kernel.shape[:input_axes]))
  return {"kernel": tf.reshape(kernel, [inputs, -1]),
          "bias": tf.reshape(bias, [-1])}


def dense_step(weights, x):
  # x: (b, inputs) -> (b, outputs)
  return tf.matmul(x, weights["kernel"]) + weights["bias"]


def layer_norm_weights(layernorm):
  # LayerNormalization computes in float32 whatever its compute dtype.
  return {"gamma": tf.cast(layernorm.gamma, tf.float32),
          "beta": tf.cast(layernorm.beta, tf.float32)}


def layer_norm_step(layernorm, weights, x):
  """keras.layers.LayerNormalization over the last axis of x (b, d), in
  float32 as Keras computes it, in 9 ops."""
  dtype = x.dtype
  x = tf.cast(x, tf.float32)
  mean = tf.reduce_mean(x, axis=-1, keepdims=True)
  variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=-1,
                            keepdims=True)
  scale = tf.math.rsqrt(variance + layernorm.epsilon) * weights["gamma"]
  return tf.cast((x - mean) * scale + weights["beta"], dtype)


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

  def step_weights(self):
    dtype = self.compute_dtype
    return {"tokens": tf.cast(self.token_embedding.embeddings, dtype),
            "positions": tf.cast(self.pos_embedding.embeddings, dtype)}

  def step(self, token, i, weights):
    # token: (b,) at position i -> (b, d)
    return (tf.gather(weights["tokens"], token)
            + tf.gather(weights["positions"], i))

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size,
            "max_length": self.max_length, "depth": self.depth}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CachedMultiHeadAttention(keras.layers.MultiHeadAttention):
  """Keras' MultiHeadAttention that can also attend from a key/value cache,
  one query position a step (after keras_hub's CachedMultiHeadAttention).

  `call` is the stock layer. Two caches, each laid out so that no step
  transposes it (batched matmul reads heads before positions):
  - the image's keys and values {"k", "v": (heads, b, S, k)}, projected once
    per image by `image_cache` and read by `cross_step`. Heads first, so that
    the r query rows of one image (beam search's beams) attend to its one
    copy as an (r, k) block: no copy per beam, and no transpose of the
    queries, which the projection gives heads first too;
  - the self-attention's of positions 0..i-1 {"k", "v": (b, heads, i, k)},
    one per row, to which `self_step` appends position i before attending
    over 0..i, all the causal mask would let it see.
  The self-attention cache grows by one position a step, as GPT-2's `past`
  did in TensorFlow, rather than being a max_length buffer written in place
  (keras_hub's `slice_update`): without XLA, TensorFlow has no in-place
  update of a slice, and a scatter into the buffer is a dozen index ops per
  write, while a concat is one op that moves only the positions there are
  (beam search also reorders only those). A decoding loop declares the
  position axis as growing (`TransformerDecoderCaptioner.cache_shapes`).
  The steps compute the stock layer's explicit path (`_compute_attention`
  as the full-sequence call runs it: projections, query scaled by
  1/sqrt(key_dim), softmax, weighted values, `_output_dense`) on 2-D rows
  (b, d), with the projections of `self_step_weights` and
  `cross_step_weights`, so a cached step computes
  what the layer computes on the whole sequence, up to float rounding.
  """

  def image_cache(self, value):
    # value (b, S, c) -> {"k", "v": (heads, b, S, k)}
    # EinsumDense gives (b, S, heads, k).
    heads_first = lambda t: tf.transpose(t, [2, 0, 1, 3])
    return {"k": heads_first(self._key_dense(value)),
            "v": heads_first(self._value_dense(value))}

  def empty_cache(self, batch, dtype):
    # -> {"k", "v": (batch, heads, 0, k)}: no position yet, one appended
    # per step.
    empty = lambda dim: tf.zeros([batch, self.num_heads, 0, dim], dtype)
    return {"k": empty(self.key_dim), "v": empty(self._value_units())}

  def _value_units(self):
    return self.value_dim or self.key_dim

  def _scaled_query_weights(self):
    # The query's projection as a 2-D kernel, scaled by 1/sqrt(key_dim).
    dtype = self.compute_dtype
    scale = tf.cast(self._inverse_sqrt_key_dim, dtype)
    return {name: w * scale for name, w in
            flat_dense_weights(self._query_dense, dtype).items()}

  def self_step_weights(self):
    """For `self_step`, read once: 2-D kernels, the scaled query's, the
    key's and the value's in one (d, heads * (2k + value_dim))."""
    dtype = self.compute_dtype
    query = self._scaled_query_weights()
    key = flat_dense_weights(self._key_dense, dtype)
    value = flat_dense_weights(self._value_dense, dtype)
    return {"output": flat_dense_weights(self._output_dense, dtype,
                                         input_axes=2),
            "query_key_value": {
                name: tf.concat([query[name], key[name], value[name]],
                                axis=-1)
                for name in ("kernel", "bias")}}

  def cross_step_weights(self):
    """For `cross_step`, read once, heads first: the scaled query's kernel
    (heads, d, k) and bias (heads, 1, k), the output's kernel (heads,
    value_dim, d)."""
    heads, k = self.num_heads, self.key_dim
    query = self._scaled_query_weights()
    output = flat_dense_weights(self._output_dense, self.compute_dtype,
                                input_axes=2)
    return {
        "query": {"kernel": tf.transpose(tf.reshape(
                      query["kernel"], [-1, heads, k]), [1, 0, 2]),
                  "bias": tf.reshape(query["bias"], [heads, 1, k])},
        "output": {"kernel": tf.reshape(
                       output["kernel"], [heads, self._value_units(), -1]),
                   "bias": output["bias"]}}

  def self_step(self, weights, x, cache):
    """x (b, d) at position i, cache of positions 0..i-1 -> output (b, d),
    the cache of positions 0..i."""
    heads, k, v = self.num_heads, self.key_dim, self._value_units()
    q, key, value = tf.split(dense_step(weights["query_key_value"], x),
                             [heads * k, heads * k, heads * v], axis=-1)
    new = lambda t, dim: tf.reshape(t, [-1, heads, 1, dim])
    cache = {"k": tf.concat([cache["k"], new(key, k)], axis=2),
             "v": tf.concat([cache["v"], new(value, v)], axis=2)}
    output, _ = self._attend_step(weights, new(q, k), cache)
    return output, cache

  def cross_step(self, weights, x, cache):
    """x (b*r, d): r rows per image, an image's rows adjacent (beam search's
    beams; r = 1 in greedy decoding), cache of the b images -> output (b*r,
    d), scores (heads, b*r, S)."""
    heads, images = self.num_heads, tf.shape(cache["k"])[1]
    q = tf.matmul(x[None], weights["query"]["kernel"]) + weights["query"][
        "bias"]                                             # (heads, b*r, k)
    q = tf.reshape(q, [heads, images, -1, self.key_dim])    # (heads, b, r, k)
    scores = tf.nn.softmax(tf.matmul(q, cache["k"], transpose_b=True))
    values = tf.matmul(scores, cache["v"])                  # (heads, b, r, v)
    values = tf.reshape(values, [heads, -1, self._value_units()])
    output = tf.reduce_sum(tf.matmul(values, weights["output"]["kernel"]),
                           axis=0) + weights["output"]["bias"]
    cells = scores.shape[-1] or tf.shape(scores)[-1]
    return output, tf.reshape(scores, [heads, -1, cells])

  def _attend_step(self, weights, q, cache):
    """q (b, heads, 1, k), scaled -> output (b, d), scores (b, heads, 1,
    S)."""
    scores = tf.nn.softmax(tf.matmul(q, cache["k"], transpose_b=True))
    values = tf.reshape(tf.matmul(scores, cache["v"]),      # (b, heads, 1, v)
                        [-1, self.num_heads * self._value_units()])
    return dense_step(weights["output"], values), scores


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

  def step_weights(self):
    return {"mha": self.mha.self_step_weights(),
            "norm": layer_norm_weights(self.layernorm)}

  def step(self, x, cache, weights):
    """One new position i: x (b, d), cache of keys and values
    {"k", "v": (b, heads, i, k)} -> (b, d), the cache with position i
    appended. The step attends over positions 0..i, all it may see: no
    mask."""
    attn, cache = self.mha.self_step(weights["mha"], x, cache)
    return layer_norm_step(self.layernorm, weights["norm"], x + attn), cache


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
    # y: (b, h*w, c) -> the image's keys and values, (heads, b, h*w, k) each
    return self.mha.image_cache(y)

  def step_weights(self):
    return {"mha": self.mha.cross_step_weights(),
            "norm": layer_norm_weights(self.layernorm)}

  def step(self, x, image_kv, weights):
    """x (b*r, d), r rows per image -> (b*r, d) and attention scores
    (heads, b*r, h*w)."""
    attn, scores = self.mha.cross_step(weights["mha"], x, image_kv)
    return (layer_norm_step(self.layernorm, weights["norm"], x + attn),
            scores)


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

  def step_weights(self):
    dtype = self.compute_dtype
    return {"dense_1": flat_dense_weights(self.dense_1, dtype),
            "dense_2": flat_dense_weights(self.dense_2, dtype),
            "norm": layer_norm_weights(self.layernorm)}

  def step(self, x, weights):
    # x: (b, d) -> (b, d)
    y = dense_step(weights["dense_2"],
                   tf.nn.relu(dense_step(weights["dense_1"], x)))
    return layer_norm_step(self.layernorm, weights["norm"], x + y)

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

  def step_weights(self):
    return {"self": self.self_attention.step_weights(),
            "cross": self.cross_attention.step_weights(),
            "ff": self.ff.step_weights()}

  def step(self, x, cache, weights):
    """x (b*r, d) at the next position, r rows per image -> (b*r, d), cache,
    scores (heads, b*r, h*w)."""
    x, self_cache = self.self_attention.step(x, cache["self"],
                                             weights["self"])
    x, scores = self.cross_attention.step(x, cache["image"], weights["cross"])
    return (self.ff.step(x, weights["ff"]),
            {"self": self_cache, "image": cache["image"]}, scores)

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

  def step_weights(self):
    return flat_dense_weights(self.dense, self.dense.compute_dtype)

  def step(self, x, weights):
    # x: (b, d) -> (b, v)
    return dense_step(weights, tf.cast(x, weights["kernel"].dtype))

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size,
            "label_counts": counts_config(self.label_counts)}
