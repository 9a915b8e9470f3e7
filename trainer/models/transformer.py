"""Model A: the Transformer decoder captioner of the TensorFlow tutorial.

`TransformerDecoderCaptioner` is the decoder that model A and model C
(patch_transformer.py) share: token embedding, DecoderLayers (causal
self-attention, cross-attention to the image cells, feed-forward), the
vocabulary, and its cached decoding step. A subclass gives it the image
cells (`image_cells`). `Captioner` is model A: the extractor's grid,
optionally projected to `units`, plus a position embedding per cell.

Shapes in comments: b batch, t tokens, h*w image cells, c feature channels,
d model units, v vocabulary size.
"""

import einops
import keras
import tensorflow as tf

from core import text
from trainer.models import base
from trainer.models import layers


class TransformerDecoderCaptioner(base.CaptionModel):
  """Model A's decoder over `image_cells` (b, h*w, d), which subclasses
  define; they call `build_decoder` in their __init__ after creating their
  own image layers (so the weights keep that order)."""

  def build_decoder(self, num_layers, units, num_heads, dropout_rate,
                    label_counts):
    self.seq_embedding = layers.SeqEmbedding(self.vocab_size, self.max_length,
                                             units)
    self.decoder_layers = [
        layers.DecoderLayer(units, num_heads=num_heads,
                            dropout_rate=dropout_rate)
        for _ in range(num_layers)]
    self.output_layer = layers.TokenOutput(self.vocab_size, label_counts)

  def call(self, inputs, training=False):
    image, tokens = inputs
    cells = self.image_cells(image, training=training)     # (b, h*w, d)
    x = self.seq_embedding(tokens)                         # (b, t, d)
    for layer in self.decoder_layers:
      x = layer(cells, x, training=training)
    return self.output_layer(x)                            # (b, t, v)

  def start_cache(self, image, max_length):
    """Per layer: self-attention keys/values of no position yet and the
    image's cross-attention keys/values, computed once."""
    if not self.decoder_layers[0].cross_attention.mha.built:
      # The attention layers create their projections on a first call.
      self((image, tf.fill([tf.shape(image)[0], 1],
                           tf.constant(text.START_ID, tf.int64))))
    del max_length  # the self-attention keys and values grow per step
    cells = self.image_cells(image)
    return [layer.start_cache(cells) for layer in self.decoder_layers]

  def cache_shapes(self, cache):
    """The decoding loop's shape invariants: the self-attention keys and
    values (rows, heads, S, k) grow along S, one position a step; rows, and
    the images of the image's keys and values (heads, images, h*w, k), leave
    the batch as they finish."""
    grows = lambda t: tf.TensorShape([None, t.shape[1], None, t.shape[3]])
    images = lambda t: tf.TensorShape([t.shape[0], None, *t.shape[2:]])
    return [{"self": tf.nest.map_structure(grows, layer_cache["self"]),
             "image": tf.nest.map_structure(images, layer_cache["image"])}
            for layer_cache in cache]

  def start_beam_cache(self, image, beam_width, max_length):
    """One copy of each image's keys and values for all its beams
    (CachedMultiHeadAttention.cross_step attends an image's beams as one
    block); the self-attention's, of no position yet, per beam."""
    cache = self.start_cache(image, max_length)
    per_beam = lambda t: tf.repeat(t, beam_width, axis=0)
    return [{"self": tf.nest.map_structure(per_beam, layer_cache["self"]),
             "image": layer_cache["image"]} for layer_cache in cache]

  def select_cache(self, cache, indices):
    return self._select(cache, indices, indices)

  def select_beams_cache(self, cache, images, rows):
    return self._select(cache, images, rows)

  @staticmethod
  def _select(cache, images, rows):
    return [{"self": tf.nest.map_structure(lambda t: tf.gather(t, rows),
                                           layer_cache["self"]),
             "image": tf.nest.map_structure(
                 lambda t: tf.gather(t, images, axis=1),
                 layer_cache["image"])}
            for layer_cache in cache]

  def reorder_cache(self, cache, indices):
    """Only the self-attention keys and values follow the beams: the
    image's are the same for every beam of an image (beams never move to
    another image's rows)."""
    return [{"self": tf.nest.map_structure(lambda t: tf.gather(t, indices),
                                           layer_cache["self"]),
             "image": layer_cache["image"]} for layer_cache in cache]

  def decoding_step(self):
    """Every layer's weights read once (2-D kernels, layers.py), and a step
    on 2-D rows that uses them: about a third of the ops of a step through
    the Keras layers, which re-read every variable and reshape around every
    matmul at each step."""
    weights = {"embedding": self.seq_embedding.step_weights(),
               "layers": [layer.step_weights()
                          for layer in self.decoder_layers],
               "output": self.output_layer.step_weights()}

    def step(token, i, cache):
      x = self.seq_embedding.step(token, i, weights["embedding"])  # (b, d)
      new_cache, maps = [], []
      for layer, layer_cache, layer_weights in zip(
          self.decoder_layers, cache, weights["layers"]):
        x, layer_cache, scores = layer.step(x, layer_cache, layer_weights)
        new_cache.append(layer_cache)
        maps.append(scores)                                # (heads, b, h*w)
      # The mean over heads and layers (every layer has as many heads).
      attention = tf.reduce_mean(tf.concat(maps, axis=0), axis=0)
      return (self.output_layer.step(x, weights["output"]), new_cache,
              attention)

    return step

  def step(self, token, i, cache):
    """token (b,) at position i -> next-token logits (b, v), the cache, and
    the cross-attention map (b, h*w) averaged over heads and layers."""
    return self.decoding_step()(token, i, cache)


@keras.saving.register_keras_serializable(package="captioner")
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


@keras.saving.register_keras_serializable(package="captioner")
class Captioner(TransformerDecoderCaptioner):
  """Model A: (image grid (b, h, w, c), tokens (b, t)) -> next-token logits
  (b, t, v)."""

  def __init__(self, vocab_size, grid, num_layers=2, units=256, num_heads=2,
               dropout_rate=0.5, max_length=50, image_position_embedding=True,
               label_counts=None, image_projection=False, **kwargs):
    super().__init__(vocab_size, grid, max_length, **kwargs)
    self.num_layers = num_layers
    self.units = units
    self.num_heads = num_heads
    self.dropout_rate = dropout_rate
    self.label_counts = label_counts
    h, w, c = self.grid
    self.image_projection = (ImageProjection(units) if image_projection
                             else None)
    # Positions are added after the projection, at the width attended over.
    depth = units if image_projection else c
    self.image_positions = (keras.layers.Embedding(h * w, depth)
                            if image_position_embedding else None)
    self.build_decoder(num_layers, units, num_heads, dropout_rate,
                       label_counts)

  def image_cells(self, image, training=False):
    # (b, h, w, c) -> (b, h*w, c), with the cells' position embedding;
    # float16 under mixed precision, like the embedding.
    del training  # no dropout here
    image = einops.rearrange(tf.cast(image, self.compute_dtype),
                             "b h w c -> b (h w) c")
    if self.image_projection is not None:
      image = self.image_projection(image)                 # (b, h*w, d)
    if self.image_positions is not None:
      image = image + self.image_positions(tf.range(tf.shape(image)[1]))[None]
    return image

  def get_config(self):
    return {**super().get_config(), "num_layers": self.num_layers,
            "units": self.units, "num_heads": self.num_heads,
            "dropout_rate": self.dropout_rate,
            "image_position_embedding": self.image_positions is not None,
            "label_counts": layers.counts_config(self.label_counts),
            "image_projection": self.image_projection is not None}
