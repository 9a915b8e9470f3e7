"""The serving SavedModel: image bytes in, caption out, all in the graph.

Signatures:
  serving_default  image_bytes (string [b], JPEG/PNG/GIF/BMP/WebP bytes)
                   -> caption (string [b])
  from_examples    examples (serialized raw tf.Examples from
                   ImageCaptionExampleGen) -> caption.
  from_cached_features  image_features (string [b]: each example's
                   `image_features` bytes, the grid as the cache stores it)
                   -> caption, decoded as from_examples; what the Evaluator
                   scores (TFMA feeds it the feature by name).
  from_features    image_features (float32 [b, h, w, c], the extractor's grid)
                   -> caption; batch inference over cached features.
  sample           image_bytes, temperature (float32 scalar, 0 = greedy),
                   seed (int32 scalar) -> caption: tokens drawn from
                   softmax(logits / temperature); the same seed gives the
                   same captions.
  beam_search      image_bytes, beam_width (int32), length_penalty (float32)
                   -> caption, log_prob
  attention        image_bytes -> caption, tokens, attention (float32
                   [b, T, h, w]: each token's cross-attention over the grid)

Only stock TensorFlow ops: decoding and resizing, the feature extractor, the
greedy decoder loop and the vocabulary lookup (the transform graph's
vocabulary file, stored as an asset of this SavedModel).

Bad requests to serving_default fail with an InvalidArgumentError that names
the offending element (TF Serving answers HTTP 400 / gRPC INVALID_ARGUMENT
with that message): empty bytes, bytes that are not an image, and images
whose header declares more than `max_pixels` pixels (decompression bombs,
rejected before anything is decoded), animated WebP (decode_image cannot
give it 3 channels). Corrupt image data fails in the decoder, with its own
message.
"""

import collections
import os

import tensorflow as tf

from core import extractors
from core import features
from core import text
from trainer import data
from trainer import models

# Formats served, in the order of `image_header_size`'s branches. The magic
# numbers are the ones tf.io.decode_image dispatches on (JPEG XL, which it
# also decodes, is refused: its size header is bit-packed).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
_NOT_AN_IMAGE = "is not a JPEG, PNG, GIF, BMP or WebP image"
# Enough leading bytes for every format's width and height fields.
_HEADER_LENGTH = 32


def _head(image_bytes):
  """The first _HEADER_LENGTH bytes, zero-padded: substr never runs off."""
  return tf.strings.join([tf.strings.substr(image_bytes, 0, _HEADER_LENGTH),
                          tf.constant(b"\0" * _HEADER_LENGTH)])


def _header(image_bytes):
  """The first _HEADER_LENGTH bytes, zero-padded, as int64 [_HEADER_LENGTH]."""
  raw = tf.io.decode_raw(_head(image_bytes), tf.uint8)[:_HEADER_LENGTH]
  return tf.cast(raw, tf.int64)


def _uint(header, offset, size, big_endian=False):
  """Bytes [offset, offset + size) of the header as an unsigned integer."""
  weights = [256 ** k for k in range(size)]
  if big_endian:
    weights.reverse()
  return tf.reduce_sum(header[offset:offset + size]
                       * tf.constant(weights, tf.int64))


def _int32(header, offset):
  """A little-endian signed 32-bit field, as its absolute value."""
  value = _uint(header, offset, 4)
  return tf.abs(tf.where(value >= 2**31, value - 2**32, value))


def _count(image_bytes, marker):
  """How often `marker` occurs in the bytes (a frame count, at least 1)."""
  parts = tf.strings.split(tf.reshape(image_bytes, [1]), sep=marker)
  return tf.maximum(parts.row_lengths()[0] - 1, 1)


def image_format(image_bytes):
  """Index into FORMATS from the magic number, or -1: int32 scalar."""
  head = _head(image_bytes)
  prefix = lambda n: tf.strings.substr(head, 0, n)
  checks = [
      tf.equal(prefix(3), b"\xff\xd8\xff"),
      tf.equal(prefix(8), b"\x89PNG\r\n\x1a\n"),
      tf.equal(prefix(4), b"GIF8"),
      tf.equal(prefix(2), b"BM"),
      tf.equal(prefix(4), b"RIFF") & tf.equal(
          tf.strings.substr(head, 8, 4), b"WEBP"),
  ]
  index = tf.constant(-1)
  for i in reversed(range(len(checks))):  # the first match wins
    index = tf.where(checks[i], i, index)
  return index


def image_header_size(image_bytes):
  """(width, height, frames) an image declares, read from its header.

  int64 [3]; zeros for an unknown format. Nothing is decoded: JPEG's size
  comes from tf.image.extract_jpeg_shape (libjpeg reads the header only),
  the others from fixed header fields. Frames counts GIF graphic control
  blocks, since decode_image decodes every frame of a GIF even when it keeps
  only the first (animated WebP is refused, see `checked_image_bytes`).
  """
  header = _header(image_bytes)
  one = tf.constant(1, tf.int64)

  def jpeg():
    shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
    return tf.stack([shape[1], shape[0], one])

  def png():  # IHDR: big-endian width and height after the 8-byte signature
    return tf.stack([_uint(header, 16, 4, big_endian=True),
                     _uint(header, 20, 4, big_endian=True), one])

  def gif():  # logical screen size, little-endian 16 bits
    return tf.stack([_uint(header, 6, 2), _uint(header, 8, 2),
                     _count(image_bytes, b"\x21\xf9\x04")])

  def bmp():  # BITMAPINFOHEADER; a negative height means top-down rows
    return tf.stack([_int32(header, 18), _int32(header, 22), one])

  def webp():
    chunk = tf.strings.substr(_head(image_bytes), 12, 4)
    # VP8L: 14-bit width - 1 and height - 1 packed after the 0x2f signature.
    bits = _uint(header, 21, 4)
    lossless = tf.stack([bits % 2**14 + 1, bits // 2**14 % 2**14 + 1, one])
    # VP8X (extended): 24-bit canvas width - 1 and height - 1.
    extended = tf.stack([_uint(header, 24, 3) + 1, _uint(header, 27, 3) + 1,
                         one])
    # VP8 (lossy): 14-bit width and height after the frame start code.
    lossy = tf.stack([_uint(header, 26, 2) % 2**14,
                      _uint(header, 28, 2) % 2**14, one])
    return tf.where(tf.equal(chunk, b"VP8L"), lossless,
                    tf.where(tf.equal(chunk, b"VP8X"), extended, lossy))

  return tf.switch_case(
      image_format(image_bytes), [jpeg, png, gif, bmp, webp],
      default=lambda: tf.zeros([3], tf.int64))


def checked_image_bytes(index, image_bytes, max_pixels):
  """The bytes, once they are known to be an image of at most max_pixels.

  Raises (when run) InvalidArgumentError naming image_bytes[index] and the
  problem. The checks are control dependencies of the returned tensor, so
  nothing downstream (the decoder) runs on a refused image.
  """
  not_empty = tf.debugging.Assert(
      tf.strings.length(image_bytes) > 0,
      [tf.strings.format("image_bytes[{}] is empty", index)])
  image_type = image_format(image_bytes)
  with tf.control_dependencies([not_empty]):
    known = tf.debugging.Assert(
        image_type >= 0,
        [tf.strings.format("image_bytes[{}] " + _NOT_AN_IMAGE, index)])
  # decode_image cannot give animated WebP 3 channels ("WebP Animation must
  # be 4 channel RGBA"): say so in the request's terms. VP8X flag 0x02.
  animated = (tf.equal(image_type, FORMATS.index("WebP"))
              & tf.equal(tf.strings.substr(_head(image_bytes), 12, 4), b"VP8X")
              & tf.equal(_header(image_bytes)[20] // 2 % 2, 1))
  with tf.control_dependencies([known]):
    still = tf.debugging.Assert(
        ~animated,
        [tf.strings.format("image_bytes[{}] is an animated WebP image, which "
                           "is not supported; send a still image", index)])
  with tf.control_dependencies([still]):
    size = image_header_size(image_bytes)
  pixels = size[0] * size[1] * size[2]
  small_enough = tf.debugging.Assert(
      pixels <= max_pixels,
      [tf.strings.format(
          "image_bytes[{}] declares {}x{} pixels in {} frame(s), more than the "
          f"serving limit of max_pixels={max_pixels} (a decompression bomb?); "
          "downscale the image before sending it",
          (index, size[0], size[1], size[2]))])
  with tf.control_dependencies([small_enough]):
    return tf.identity(image_bytes)


class CaptionerExport(tf.Module):

  def __init__(self, captioner, extractor, image_size, vocab_path,
               max_length, max_pixels=features.MAX_PIXELS,
               feature_dtype=features.DEFAULT_FEATURE_DTYPE, eval_beam_width=0,
               serving_beam_width=0):
    super().__init__()
    # How the training cache stored features; served ones are rounded alike.
    self.feature_dtype = feature_dtype
    # from_examples (what the Evaluator scores) decodes with this beam width
    # (0: greedy, like serving_default). A variable, not a constant: beam
    # search's loop needs the width unknown when traced, as the
    # beam_search signature's input is.
    self.eval_beam_width = int(eval_beam_width)
    self.eval_beam = tf.Variable(self.eval_beam_width, trainable=False,
                                 dtype=tf.int32, name="eval_beam_width")
    # serving_default and from_features decode with this beam width (0:
    # greedy): what a TF Serving client gets without asking.
    self.serving_beam_width = int(serving_beam_width)
    self.serving_beam = tf.Variable(self.serving_beam_width, trainable=False,
                                    dtype=tf.int32, name="serving_beam_width")
    self.captioner = captioner
    self.extractor = extractor
    # Every weight in Keras order, so the SavedModel's variables can be read
    # back into a freshly built Keras model (`restore_keras_weights`): the
    # checkpoint does not name layers held in Python lists (A's decoder
    # layers), whose variables it reaches only through the optimizer.
    self.captioner_weights = list(captioner.weights)
    self.extractor_weights = list(extractor.weights)
    self.image_size = image_size
    self.max_length = max_length
    self.max_pixels = int(max_pixels)
    self.grid = tuple(int(g) for g in captioner.grid)
    self.vocab_asset = tf.saved_model.Asset(vocab_path)
    self.vocab = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            self.vocab_asset, key_dtype=tf.int64,
            key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string,
            value_index=tf.lookup.TextFileIndex.WHOLE_LINE),
        default_value=text.UNK)
    # The signature's input spec needs the grid before tracing.
    grids = tf.TensorSpec([None, *self.grid], tf.float32,
                          name=features.IMAGE_FEATURES)
    self.serve_features = tf.function(self._serve_features,
                                      input_signature=[grids],
                                      autograph=False)
    # The decoders, each traced once and called by every signature that
    # decodes that way: a decoder's loop is most of the graph, and tracing
    # it once per signature made most of the export's time.
    self.greedy = tf.function(self._greedy, input_signature=[grids],
                              autograph=False)
    self.beam = tf.function(self._beam, input_signature=[
        grids, tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32)],
                            autograph=False)
    # Likewise image bytes -> the extractor's grids, which four signatures
    # share: traced once, not once per signature (the extractor's network
    # is the largest graph after the decoders).
    self.extract = tf.function(self._extract, input_signature=[
        tf.TensorSpec([None], tf.string)], autograph=False)

  def detokenize(self, ids):
    """Token ids (b, t) -> captions (b,): words up to the first [END]."""
    keep = tf.math.cumsum(tf.cast(tf.equal(ids, text.END_ID), tf.int32),
                          axis=1) == 0
    keep &= ids > text.END_ID  # drops padding and any special token
    words = tf.ragged.boolean_mask(self.vocab.lookup(ids), keep)
    return tf.strings.reduce_join(words, axis=1, separator=" ")

  def _greedy(self, grids):
    """(ids (b, T), attention (b, T, h*w)) of greedy decoding."""
    return self.captioner.decode_cached(grids, self.max_length)

  def _beam(self, grids, width, length_penalty):
    """(ids (b, T), log_prob (b,)) of the best beam."""
    return self.captioner.beam_search(grids, width, length_penalty,
                                      self.max_length)

  def caption_grids(self, grids):
    # Round served features as the training cache stored them.
    grids = data.round_like_cache(grids, self.feature_dtype)
    if self.serving_beam_width:
      return self._beam_captions(grids, self.serving_beam)
    return self.detokenize(self.greedy(grids)[0])

  def _beam_captions(self, grids, width):
    ids, _ = self.beam(grids, width.read_value(),
                       tf.constant(0.0, tf.float32))
    return self.detokenize(ids)

  def load_images(self, image_bytes):
    """Checked bytes [b] -> float32 images [b, S, S, 3]."""

    def load(args):
      index, one_image = args
      return extractors.load_image(
          checked_image_bytes(index, one_image, self.max_pixels),
          self.image_size)

    return tf.map_fn(
        load, (tf.range(tf.size(image_bytes, out_type=tf.int64)), image_bytes),
        fn_output_signature=tf.TensorSpec(
            [self.image_size, self.image_size, 3], tf.float32))

  def _extract(self, image_bytes):
    """Image bytes [b] -> the extractor's grids (b, h, w, c), unrounded."""
    return self.extractor(self.load_images(image_bytes), training=False)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES)])
  def serve_images(self, image_bytes):
    return {features.CAPTION: self.caption_grids(self.extract(image_bytes))}

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None], tf.string, name=features.EXAMPLES)])
  def serve_examples(self, examples):
    parsed = tf.io.parse_example(examples, {
        features.IMAGE_FEATURES: tf.io.FixedLenFeature([], tf.string)})
    return self._caption_cached(parsed[features.IMAGE_FEATURES])

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None], tf.string, name=features.IMAGE_FEATURES)])
  def serve_cached_features(self, image_features):
    return self._caption_cached(image_features)

  def _caption_cached(self, image_features):
    """The cache's feature bytes [b] -> {"caption"}, decoded with the eval
    beam width (what the Evaluator scores)."""
    grids = data.decode_features(image_features, self.grid,
                                 self.feature_dtype)
    if self.eval_beam_width:
      return {features.CAPTION: self._beam_captions(grids, self.eval_beam)}
    return {features.CAPTION: self.detokenize(self.greedy(grids)[0])}

  def _serve_features(self, image_features):
    return {features.CAPTION: self.caption_grids(image_features)}

  def _grids_from_bytes(self, image_bytes):
    return data.round_like_cache(self.extract(image_bytes),
                                 self.feature_dtype)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES),
      tf.TensorSpec([], tf.int32, name="beam_width"),
      tf.TensorSpec([], tf.float32, name="length_penalty")])
  def serve_beam_search(self, image_bytes, beam_width, length_penalty):
    tf.debugging.assert_positive(
        beam_width, message="beam_width must be at least 1")
    ids, log_prob = self.beam(self._grids_from_bytes(image_bytes),
                              beam_width, length_penalty)
    return {features.CAPTION: self.detokenize(ids), "log_prob": log_prob}

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES),
      tf.TensorSpec([], tf.float32, name="temperature"),
      tf.TensorSpec([], tf.int32, name="seed")])
  def serve_sample(self, image_bytes, temperature, seed):
    tf.debugging.assert_non_negative(
        temperature, message="temperature must be at least 0 (0 is greedy)")
    ids = self.captioner.decode(self._grids_from_bytes(image_bytes),
                                self.max_length, temperature, seed)
    return {features.CAPTION: self.detokenize(ids)}

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES)])
  def serve_attention(self, image_bytes):
    ids, attention = self.greedy(self._grids_from_bytes(image_bytes))
    h, w, _ = self.grid
    return {
        features.CAPTION: self.detokenize(ids),
        # One word per generated token ([END] and padding as "").
        features.TOKENS: tf.where(ids > text.END_ID, self.vocab.lookup(ids),
                                  ""),
        # (b, T, h, w): each token's cross-attention over the image grid,
        # averaged over heads and layers.
        features.ATTENTION_MAP: tf.reshape(attention,
                                           [tf.shape(ids)[0], -1, h, w]),
    }


def export(path, captioner, extractor, image_size, vocab_path, max_length,
           max_pixels=features.MAX_PIXELS,
           feature_dtype=features.DEFAULT_FEATURE_DTYPE,
           eval_beam_width=0, serving_beam_width=0):
  """Saves the serving SavedModel (the signatures above) to `path`.

  `max_pixels` is the decompression-bomb limit of serving_default; pass the
  config's `features.max_pixels` so serving refuses what caching skips.
  `feature_dtype` is how the cache stored features (`features.dtype`):
  from_examples decodes them so, and served features are rounded alike.
  `eval_beam_width` (`evaluation.beam_width`): from_examples and
  from_cached_features (which the Evaluator scores) decode with beam search
  of this width (0: greedy).
  `serving_beam_width` (`serving.beam_width`): the same for serving_default
  and from_features.
  """
  data.feature_dtype(feature_dtype)  # a bad name fails before tracing
  grid = tuple(int(g) for g in captioner.grid)
  extractor_grid = tuple(extractor.output_shape[1:])
  if extractor_grid != grid:
    raise ValueError(f"the extractor outputs grids of {extractor_grid} but "
                     f"the captioner was built for {grid}")
  module = CaptionerExport(captioner, extractor, image_size, vocab_path,
                           max_length, max_pixels, feature_dtype,
                           eval_beam_width, serving_beam_width)
  signatures = {
      features.SERVING_DEFAULT: module.serve_images,
      features.FROM_EXAMPLES: module.serve_examples,
      features.FROM_CACHED_FEATURES: module.serve_cached_features,
      features.FROM_FEATURES: module.serve_features,
      features.SAMPLE: module.serve_sample,
      # Every captioner (base.CaptionModel) has an incremental decoder.
      features.BEAM_SEARCH: module.serve_beam_search,
      features.ATTENTION: module.serve_attention,
  }
  tf.saved_model.save(module, path, signatures=signatures)
  return module


def restore_keras_weights(model_dir, captioner, extractor=None):
  """Reads an exported model's weights into a Keras captioner (and
  extractor) built from the same config, e.g. to fine-tune a pushed model or
  to compare it with other decoders. Fails on any missing or misshapen
  weight.

  Keras has no way of its own to do this: `get_config` rebuilds a captioner,
  not its weights, and the export is a tf.Module SavedModel (the serving
  graph), which keras.saving.load_model and Model.load_weights do not read
  (keras.layers.TFSMLayer only calls its signatures). Its variables are read
  by position from `captioner_weights`, the Keras weight order."""
  children = {"captioner_weights": list(captioner.weights)}
  if extractor is not None:
    children["extractor_weights"] = list(extractor.weights)
  checkpoint = os.path.join(model_dir, "variables", "variables")
  saved = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
  for name, weights in children.items():
    count = sum(1 for key in saved if key.startswith(name + "/"))
    if count != len(weights):
      raise ValueError(
          f"{model_dir} holds {count} {name} and the model built here has "
          f"{len(weights)}: build it from the config it was trained with (or "
          "it was exported before weights were listed)")
  tf.train.Checkpoint(**children).read(checkpoint).expect_partial()


class Restored(collections.namedtuple(
    "Restored", "captioner extractor spec vocabulary grid")):
  """What `restore_captioner` rebuilds; extractor and spec may be None."""


def restore_captioner(model_dir, model_cfg, features_cfg=None):
  """A Keras captioner built from `model_cfg` and holding an exported model's
  weights (its feature grid from the `from_features` signature, its vocabulary
  size from its vocabulary asset); with `features_cfg`, also the
  extractor (built without downloaded weights, then restored) and its spec.

  Returns a `Restored` (captioner, extractor, spec, vocabulary, grid)."""
  served = tf.saved_model.load(model_dir)
  grid = served.signatures[features.FROM_FEATURES]
  grid = grid.structured_input_signature[1][
      features.IMAGE_FEATURES].shape.as_list()[1:]
  with tf.io.gfile.GFile(served.vocab_asset.asset_path.numpy()) as f:
    vocabulary = f.read().splitlines()
  captioner = models.build_captioner(model_cfg, len(vocabulary), grid)
  captioner((tf.zeros((1, *grid), tf.float32),
             tf.fill((1, 1), tf.constant(text.START_ID, tf.int64))))
  extractor = spec = None
  if features_cfg is not None:
    spec = extractors.extractor_spec(features_cfg.extractor,
                                     features_cfg.patch_image_size,
                                     features_cfg.patch_size,
                                     features_cfg.alpha)
    extractor = extractors.build_extractor(spec, extractors.WEIGHTS_NONE,
                                           features_cfg.patch_size)
  restore_keras_weights(model_dir, captioner, extractor)
  return Restored(captioner, extractor, spec, vocabulary, grid)
