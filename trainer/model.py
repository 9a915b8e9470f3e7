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

from captioner import text

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


class CausalSelfAttention(keras.layers.Layer):

  def __init__(self, **kwargs):
    super().__init__()
    self.mha = keras.layers.MultiHeadAttention(**kwargs)
    self.layernorm = keras.layers.LayerNormalization()

  def call(self, x):
    # x: (b, t, d) -> (b, t, d)
    attn = self.mha(query=x, value=x, use_causal_mask=True)
    return self.layernorm(x + attn)


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
    """In-graph decoding: image grid (b, h, w, c) -> ids (b, t).

    temperature 0 is greedy; above 0, tokens are drawn from
    softmax(logits / temperature) with a stateless seed (same seed, same
    captions). Re-runs the decoder on a fixed-size token buffer each step
    (the causal mask makes the unused tail irrelevant); every sequence stops
    at [END].
    """
    max_length = min(max_length or self.max_length, self.max_length)
    batch = tf.shape(image)[0]
    tokens = tf.concat(
        [tf.fill([batch, 1], tf.constant(text.START_ID, tf.int64)),
         tf.zeros([batch, max_length - 1], tf.int64)], axis=1)
    done = tf.zeros([batch], tf.bool)

    def choose(logits, i):
      # logits: (b, v) -> (b,)
      if temperature == 0.0:
        return tf.argmax(logits, axis=-1, output_type=tf.int64)
      return tf.random.stateless_categorical(
          tf.cast(logits, tf.float32) / temperature, 1,
          seed=tf.stack([tf.constant(seed, tf.int32), i]),
          dtype=tf.int64)[:, 0]

    def step(i, tokens, done):
      logits = self((image, tokens), training=False)       # (b, T, v)
      next_id = choose(logits[:, i - 1, :], i)
      next_id = tf.where(done, tf.zeros_like(next_id), next_id)
      tokens = tf.tensor_scatter_nd_update(
          tokens, tf.stack([tf.range(batch), tf.fill([batch], i)], axis=1),
          next_id)
      return i + 1, tokens, done | tf.equal(next_id, text.END_ID)

    _, tokens, _ = tf.while_loop(
        lambda i, tokens, done: (i < max_length) & ~tf.reduce_all(done),
        step, (tf.constant(1), tokens, done))
    return tokens[:, 1:]


class Captioner(GreedyDecoding, keras.Model):
  """(image grid (b, h, w, c), tokens (b, t)) -> next-token logits (b, t, v)."""

  def __init__(self, vocab_size, grid, num_layers=2, units=256, num_heads=2,
               dropout_rate=0.5, max_length=50, image_position_embedding=True,
               label_counts=None, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size
    self.grid = tuple(int(g) for g in grid)
    self.max_length = max_length
    h, w, c = self.grid
    self.image_positions = (keras.layers.Embedding(h * w, c)
                            if image_position_embedding else None)
    self.seq_embedding = SeqEmbedding(vocab_size, max_length, units)
    self.decoder_layers = [
        DecoderLayer(units, num_heads=num_heads, dropout_rate=dropout_rate)
        for _ in range(num_layers)]
    self.output_layer = TokenOutput(vocab_size, label_counts)

  def call(self, inputs, training=False):
    image, tokens = inputs
    image = einops.rearrange(image, "b h w c -> b (h w) c")
    if self.image_positions is not None:
      image = image + self.image_positions(tf.range(tf.shape(image)[1]))[None]
    x = self.seq_embedding(tokens)                         # (b, t, d)
    for layer in self.decoder_layers:
      x = layer(image, x, training=training)
    return self.output_layer(x)                            # (b, t, v)


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
