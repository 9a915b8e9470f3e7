"""The serving SavedModel: image bytes in, caption out, all in the graph.

Signatures:
  serving_default  image_bytes (string [b], JPEG/PNG) -> caption (string [b])
  from_examples    examples (serialized raw tf.Examples from
                   ImageCaptionExampleGen) -> caption; used by the Evaluator.

Only stock TensorFlow ops: decoding and resizing, the feature extractor, the
greedy decoder loop and the vocabulary lookup (the transform graph's
vocabulary file, stored as an asset of this SavedModel).
"""

import tensorflow as tf

from captioner import text
from components import extractors
from trainer import data


class CaptionerExport(tf.Module):

  def __init__(self, captioner, extractor, image_size, vocab_path,
               max_length):
    super().__init__()
    self.captioner = captioner
    self.extractor = extractor
    self.image_size = image_size
    self.max_length = max_length
    self.vocab_asset = tf.saved_model.Asset(vocab_path)
    self.vocab = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            self.vocab_asset, key_dtype=tf.int64,
            key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string,
            value_index=tf.lookup.TextFileIndex.WHOLE_LINE),
        default_value=text.UNK)

  def detokenize(self, ids):
    """Token ids (b, t) -> captions (b,): words up to the first [END]."""
    keep = tf.math.cumsum(tf.cast(tf.equal(ids, text.END_ID), tf.int32),
                          axis=1) == 0
    keep &= ids > text.END_ID  # drops padding and any special token
    words = tf.ragged.boolean_mask(self.vocab.lookup(ids), keep)
    return tf.strings.reduce_join(words, axis=1, separator=" ")

  def caption_grids(self, grids):
    # Cached features are float16; round served features the same way.
    grids = tf.cast(tf.cast(grids, tf.float16), tf.float32)
    return self.detokenize(
        self.captioner.greedy_decode(grids, self.max_length))

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name="image_bytes")])
  def serve_images(self, image_bytes):
    images = tf.map_fn(
        lambda b: extractors.load_image(b, self.image_size), image_bytes,
        fn_output_signature=tf.TensorSpec(
            [self.image_size, self.image_size, 3], tf.float32))
    grids = self.extractor(images, training=False)
    return {"caption": self.caption_grids(grids)}

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name="examples")])
  def serve_examples(self, examples):
    parsed = tf.io.parse_example(examples, {
        "image_features": tf.io.FixedLenFeature([], tf.string)})
    grids = data.decode_features(parsed["image_features"],
                                 self.captioner.grid)
    return {"caption": self.caption_grids(grids)}


def export(path, captioner, extractor, image_size, vocab_path, max_length):
  module = CaptionerExport(captioner, extractor, image_size, vocab_path,
                           max_length)
  tf.saved_model.save(module, path, signatures={
      "serving_default": module.serve_images,
      "from_examples": module.serve_examples,
  })
  return module
