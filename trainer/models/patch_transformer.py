"""Model C: an end-to-end transformer over image patches (after CPTR).

A patch encoder (Dense projection plus a learned position embedding per
cell) and transformer encoder layers, trained from scratch with the
decoder, turn the grid into image tokens; model A's decoder layers then
caption them. Works on any grid: raw pixel patches (8x8x768 for 128x128
images in 16x16 patches) or a CNN's feature map. Shapes in comments:
b batch, t tokens, n = h*w image cells, c feature channels, d units,
v vocabulary size.

The decoder (SeqEmbedding, DecoderLayers, TokenOutput) and its cached
decoding step are model A's: PatchTransformer is a
transformer.TransformerDecoderCaptioner whose `image_cells` are the patch
encoder's output. The encoder layers reuse layers.FeedForward.
"""

import einops
import keras
import tensorflow as tf

from trainer.models import layers
from trainer.models import transformer


@keras.saving.register_keras_serializable(package="captioner")
class PatchEncoder(keras.layers.Layer):
  """Dense projection of every cell plus a learned position embedding."""

  def __init__(self, num_cells, units, **kwargs):
    super().__init__(**kwargs)
    self.num_cells = num_cells
    self.units = units
    self.projection = keras.layers.Dense(units)
    self.position_embedding = keras.layers.Embedding(num_cells, units)

  def call(self, image):
    # image: (b, h, w, c) -> (b, n, d)
    patches = einops.rearrange(image, "b h w c -> b (h w) c")
    positions = tf.range(tf.shape(patches)[1])
    return self.projection(patches) + self.position_embedding(positions)[None]

  def get_config(self):
    return {**super().get_config(), "num_cells": self.num_cells,
            "units": self.units}


@keras.saving.register_keras_serializable(package="captioner")
class GlobalSelfAttention(keras.layers.Layer):
  """Every cell attends to every cell (no mask), residual, LayerNorm."""

  def __init__(self, num_heads, key_dim, dropout=0.0, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.key_dim = key_dim
    self.dropout = dropout
    self.mha = keras.layers.MultiHeadAttention(
        num_heads=num_heads, key_dim=key_dim, dropout=dropout)
    self.layernorm = keras.layers.LayerNormalization()

  def call(self, x, training=False):
    # x: (b, n, d) -> (b, n, d)
    attn = self.mha(query=x, value=x, training=training)
    return self.layernorm(x + attn)

  def get_config(self):
    return {**super().get_config(), "num_heads": self.num_heads,
            "key_dim": self.key_dim, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="captioner")
class EncoderLayer(keras.layers.Layer):
  """Self-attention over the cells, then model A's FeedForward."""

  def __init__(self, units, num_heads=1, dropout_rate=0.1, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.num_heads = num_heads
    self.dropout_rate = dropout_rate
    self.self_attention = GlobalSelfAttention(
        num_heads=num_heads, key_dim=units, dropout=dropout_rate)
    self.ff = layers.FeedForward(units=units, dropout_rate=dropout_rate)

  def call(self, x, training=False):
    # x: (b, n, d) -> (b, n, d)
    return self.ff(self.self_attention(x, training=training),
                   training=training)

  def get_config(self):
    return {**super().get_config(), "units": self.units,
            "num_heads": self.num_heads, "dropout_rate": self.dropout_rate}


@keras.saving.register_keras_serializable(package="captioner")
class PatchTransformer(transformer.TransformerDecoderCaptioner):
  """(image grid (b, h, w, c), tokens (b, t)) -> next-token logits (b, t, v).

  `last_attention_weights` is the cross-attention of the last call, stacked
  over the decoder layers: (b, layers, heads, t, h*w), each row summing to 1
  over the cells (cell k is grid row k // w, column k % w). One map per
  position: einops.reduce(weights, "b l k t n -> b t n", "mean").
  """

  def __init__(self, vocab_size, grid, num_layers=2, encoder_layers=2,
               units=256, num_heads=2, dropout_rate=0.1, max_length=50,
               label_counts=None, **kwargs):
    super().__init__(vocab_size, grid, max_length, **kwargs)
    self.num_layers = num_layers
    self.num_encoder_layers = encoder_layers
    self.units = units
    self.num_heads = num_heads
    self.dropout_rate = dropout_rate
    self.label_counts = label_counts
    h, w, _ = self.grid
    self.patch_encoder = PatchEncoder(h * w, units)
    self.patch_dropout = keras.layers.Dropout(dropout_rate)
    self.encoder_layers = [
        EncoderLayer(units, num_heads=num_heads, dropout_rate=dropout_rate)
        for _ in range(encoder_layers)]
    self.build_decoder(num_layers, units, num_heads, dropout_rate,
                       label_counts)

  @property
  def last_attention_weights(self):
    scores = [layer.cross_attention.last_attention_scores
              for layer in self.decoder_layers]
    if not scores or scores[0] is None:
      return None
    return tf.stack(scores, axis=1)                  # (b, layers, heads, t, n)

  def image_cells(self, image, training=False):
    # (b, h, w, c) -> encoded cells (b, n, d), what the decoder attends to
    cells = self.patch_dropout(self.patch_encoder(image), training=training)
    for layer in self.encoder_layers:
      cells = layer(cells, training=training)
    return cells

  def get_config(self):
    return {**super().get_config(), "num_layers": self.num_layers,
            "encoder_layers": self.num_encoder_layers, "units": self.units,
            "num_heads": self.num_heads, "dropout_rate": self.dropout_rate,
            "label_counts": layers.counts_config(self.label_counts)}
