"""Model B: Show, Attend and Tell (the older TensorFlow tutorial, Xu et al.).

An encoder projects every cell of the feature grid; a GRU decoder reads one
word per step and, before each step, attends over the cells with Bahdanau
(additive) attention using its previous hidden state. Shapes in comments:
b batch, t tokens, n = h*w image cells, c feature channels, d `units`,
r `rnn_units`, v vocabulary size.

Teacher forcing runs in the graph: the decoder steps a GRUCell with
`tf.scan` over the time axis (Keras 3's RNN layer has no `constants`
argument through which the per-image features could reach the cell). The
hidden state starts at zeros, as in the tutorial and the R blog post.
Decoding (base.CaptionModel: greedy, sampled, beam search) goes one GRU
step per token through `start_cache` / `step`, the same step as training.

The recurrence is causal by construction, so a later token (or padding
appended after the caption) never changes an earlier position's logits.
"""

import einops
import keras
import tensorflow as tf

from core import text
from trainer.models import base
from trainer.models import layers


@keras.saving.register_keras_serializable(package="captioner")
class CNNEncoder(keras.layers.Layer):
  """Dense + ReLU over every cell of the (already extracted) feature grid.

  With `num_cells`, a learned position embedding is added to each cell's
  features (not in the tutorial): the attention context is a weighted sum
  over cells, so without it the decoder could not tell *where* it looked,
  and raw pixel patches carry no position of their own (A's
  `image_position_embedding` has the same reason).
  """

  def __init__(self, units, num_cells=None, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.num_cells = num_cells
    self.dense = keras.layers.Dense(units, activation="relu")
    self.positions = (keras.layers.Embedding(num_cells, units)
                      if num_cells else None)

  def call(self, image):
    # image: (b, h, w, c) -> features (b, n, d)
    features = self.dense(einops.rearrange(image, "b h w c -> b (h w) c"))
    if self.positions is not None:
      # After the ReLU, so the context carries "where" apart from "what".
      features += self.positions(tf.range(tf.shape(features)[1]))[None]
    return features

  def get_config(self):
    return {**super().get_config(), "units": self.units,
            "num_cells": self.num_cells}


@keras.saving.register_keras_serializable(package="captioner")
class BahdanauAttention(keras.layers.Layer):
  """score = V(tanh(W1 features + W2 hidden)), softmax over the cells."""

  def __init__(self, units, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.W1 = keras.layers.Dense(units)  # pylint: disable=invalid-name
    self.W2 = keras.layers.Dense(units)  # pylint: disable=invalid-name
    self.V = keras.layers.Dense(1)  # pylint: disable=invalid-name

  def project_features(self, features):
    # (b, n, d) -> (b, n, r); the same at every step, so computed once.
    return self.W1(features)

  def call(self, features, hidden, projected=None):
    # features (b, n, d), hidden (b, r) -> context (b, d), weights (b, n)
    if projected is None:
      projected = self.project_features(features)
    score = self.V(tf.tanh(projected + self.W2(hidden)[:, None, :]))
    weights = tf.nn.softmax(score[..., 0], axis=-1)          # (b, n)
    context = tf.einsum("bn,bnd->bd", weights, features)     # (b, d)
    return context, weights

  def get_config(self):
    return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="captioner")
class RNNDecoder(keras.layers.Layer):
  """Embedding, attention, GRU, Dense(rnn_units), then the vocabulary."""

  def __init__(self, vocab_size, units=256, rnn_units=512, dropout_rate=0.1,
               label_counts=None, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = vocab_size
    self.units = units
    self.rnn_units = rnn_units
    self.dropout_rate = dropout_rate
    self.label_counts = label_counts
    self.embedding = keras.layers.Embedding(vocab_size, units)
    # The tutorial sizes the attention like the GRU: BahdanauAttention(512).
    self.attention = BahdanauAttention(rnn_units)
    self.gru_cell = keras.layers.GRUCell(
        rnn_units, recurrent_initializer="glorot_uniform")
    # Dropout on the word embeddings and on the GRU outputs: outside the
    # recurrence, so one mask per position and no per-step seed handling.
    self.embedding_dropout = keras.layers.Dropout(dropout_rate)
    self.output_dropout = keras.layers.Dropout(dropout_rate)
    self.fc = keras.layers.Dense(rnn_units)
    self.output_layer = layers.TokenOutput(vocab_size, label_counts)
    # Variables cannot be created inside the tf.scan loop of a traced call:
    # every dimension is known here, so build the step's layers now.
    self.attention.W1.build((None, None, units))
    self.attention.W2.build((None, rnn_units))
    self.attention.V.build((None, None, rnn_units))
    self.attention.built = True
    self.gru_cell.build((None, 2 * units))

  def initial_state(self, features):
    # features (b, n, d) -> hidden (b, r): zeros, as in the tutorial.
    return tf.zeros([tf.shape(features)[0], self.rnn_units], features.dtype)

  def step(self, features, projected, embedded, hidden):
    """One word: (b, d) embedded, hidden (b, r) -> hidden (b, r), (b, n)."""
    context, weights = self.attention(features, hidden, projected)
    x = tf.concat([context, embedded], axis=-1)              # (b, 2d)
    hidden, _ = self.gru_cell(x, hidden)
    return hidden, weights

  def readout(self, hiddens, training=False):
    # hiddens (b, t, r) -> logits (b, t, v)
    x = self.fc(self.output_dropout(hiddens, training=training))
    return self.output_layer(x)

  def call(self, features, tokens, training=False):
    # features (b, n, d), tokens (b, t) -> logits (b, t, v), weights (b, t, n)
    embedded = self.embedding_dropout(self.embedding(tokens),
                                      training=training)
    projected = self.attention.project_features(features)
    hidden = self.initial_state(features)
    first_weights = tf.zeros_like(projected[..., 0])         # (b, n)

    def scan_step(carry, embedded_t):
      hidden, _ = carry
      return self.step(features, projected, embedded_t, hidden)

    hiddens, weights = tf.scan(
        scan_step, einops.rearrange(embedded, "b t d -> t b d"),
        initializer=(hidden, first_weights))
    hiddens = einops.rearrange(hiddens, "t b r -> b t r")
    weights = einops.rearrange(weights, "t b n -> b t n")
    return self.readout(hiddens, training=training), weights

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size,
            "units": self.units, "rnn_units": self.rnn_units,
            "dropout_rate": self.dropout_rate,
            "label_counts": layers.counts_config(self.label_counts)}


@keras.saving.register_keras_serializable(package="captioner")
class ShowAttendTell(base.CaptionModel):
  """(image grid (b, h, w, c), tokens (b, t)) -> next-token logits (b, t, v).

  After each call, `last_attention_weights` holds the attention of every
  position over the image cells, (b, t, h*w), each row summing to 1; cell
  k is grid row k // w, column k % w.
  """

  def __init__(self, vocab_size, grid, units=256, rnn_units=512,
               dropout_rate=0.1, max_length=50, image_position_embedding=True,
               label_counts=None, **kwargs):
    super().__init__(vocab_size, grid, max_length, **kwargs)
    self.units = units
    self.rnn_units = rnn_units
    self.dropout_rate = dropout_rate
    self.label_counts = label_counts
    h, w, _ = self.grid
    self.encoder = CNNEncoder(
        units, num_cells=h * w if image_position_embedding else None)
    self.decoder = RNNDecoder(vocab_size, units=units, rnn_units=rnn_units,
                              dropout_rate=dropout_rate,
                              label_counts=label_counts)
    self.last_attention_weights = None

  def image_cells(self, image, training=False):
    # image (b, h, w, c) -> encoded cells (b, n, d)
    del training  # no dropout here
    return self.encoder(image)

  def call(self, inputs, training=False):
    image, tokens = inputs
    features = self.image_cells(image)                       # (b, n, d)
    logits, weights = self.decoder(features, tokens, training=training)
    self.last_attention_weights = weights                    # (b, t, n)
    return logits                                            # (b, t, v)

  def start_cache(self, image, max_length):
    """The decoding state: the encoded cells, their attention projection
    (computed once) and the GRU state. `max_length` is unused: the state
    does not grow."""
    del max_length
    if not self.built:  # creates the variables outside the decoding loop
      self((image, tf.fill([tf.shape(image)[0], 1],
                           tf.constant(text.START_ID, tf.int64))))
    features = self.image_cells(image)                       # (b, n, d)
    return {"features": features,
            "projected": self.decoder.attention.project_features(features),
            "hidden": self.decoder.initial_state(features)}

  def reorder_cache(self, cache, indices):
    """Only the recurrent state follows the beams: the image's features and
    their projection are the same for every beam of an image."""
    return {**cache, "hidden": tf.nest.map_structure(
        lambda t: tf.gather(t, indices), cache["hidden"])}

  def step(self, token, i, cache):
    """token (b,) at position i -> next-token logits (b, v), the cache, and
    the attention over the cells (b, h*w). One GRU step per token: the
    recurrent state is the cache (base.CaptionModel.decode_cached uses
    it)."""
    del i  # the GRU state already knows how far it is
    hidden, weights = self.decoder.step(
        cache["features"], cache["projected"],
        self.decoder.embedding(token), cache["hidden"])
    logits = self.decoder.readout(hidden[:, None, :])[:, 0, :]
    return logits, {**cache, "hidden": hidden}, weights

  def get_config(self):
    return {**super().get_config(), "units": self.units,
            "rnn_units": self.rnn_units, "dropout_rate": self.dropout_rate,
            "image_position_embedding": self.encoder.positions is not None,
            "label_counts": layers.counts_config(self.label_counts)}
