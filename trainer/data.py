"""Input pipeline: transformed examples -> (image grid, tokens) training pairs."""

import numpy as np
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.public import tfxio

from core import features

# Images read per TFXIO batch before they are split into caption pairs.
_READ_BATCH = 32


# How tf.distribute shares the data out among workers (README, "How the
# data is sharded"): by element (DATA), not by file. Every worker reads every
# file and keeps every N-th batch of its share of the global batch. By FILE
# each worker would need files of its own, but Transform writes as many
# shards per split as its Beam runner chooses (one on the DirectRunner), so
# with fewer files than workers tf.data falls back to DATA anyway (AUTO) or
# fails (FILE). With the same seed every worker shuffles the same stream, so
# the shares are disjoint and together are exactly one worker's data.
_SHARD_BY_DATA = tf.data.Options()
_SHARD_BY_DATA.experimental_distribute.auto_shard_policy = (
    tf.data.experimental.AutoShardPolicy.DATA)


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` without tf.data's autotuning model. Its thread re-tunes the
  pipeline at periods that double up to 60 s, and dropping an iterator
  (Keras does at the end of fit) waited, idle, for the rest of that
  thread's period: 0-56 s at the end of a 180-step fit on Flickr8k
  (BENCHMARKS.md, "Trainer against a bare fit"). The knobs set to AUTOTUNE
  keep tf.data's defaults instead."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


# The dtypes a feature cache may store (`features.dtype`).
FEATURE_DTYPES = {name: tf.as_dtype(name) for name in features.FEATURE_DTYPES}


def feature_dtype(name: str) -> tf.DType:
  if name not in FEATURE_DTYPES:
    raise ValueError(f"features.dtype {name!r}: choose float16 or float32")
  return FEATURE_DTYPES[name]


def stored_features(features_bytes, grid,
                    dtype=features.DEFAULT_FEATURE_DTYPE):
  """Cached feature bytes [b] -> grids [b, h, w, c] in the cache's dtype
  (float16 or float32)."""
  flat = tf.io.decode_raw(features_bytes, feature_dtype(dtype))
  # One grid per element: bytes of another dtype or grid fail here, rather
  # than reshape into a different number of images.
  batch = tf.shape(features_bytes)[:1]
  return tf.reshape(flat, tf.concat([batch, grid], 0))


def decode_features(features_bytes, grid,
                    dtype=features.DEFAULT_FEATURE_DTYPE):
  """Cached feature bytes [b] (float16 or float32) -> float32 grids
  [b, h, w, c]."""
  return tf.cast(stored_features(features_bytes, grid, dtype), tf.float32)


def round_like_cache(grids, dtype=features.DEFAULT_FEATURE_DTYPE):
  """Float32 grids rounded as a cache of `dtype` stores them, so served
  features equal the cached features a model was trained on."""
  cached = feature_dtype(dtype)
  if cached == tf.float32:
    return grids
  return tf.cast(tf.cast(grids, cached), tf.float32)


def _caption_tokens(batch, max_length):
  """A batch of images -> their captions (captions, max_length + 1), padded
  to the longest, and the number of captions of each image."""
  tokens = tf.RaggedTensor.from_sparse(batch[features.CAPTION_TOKENS])
  lengths = tf.RaggedTensor.from_sparse(batch[features.CAPTION_LENGTHS])
  captions = tf.RaggedTensor.from_row_lengths(     # (captions, (tokens))
      tokens.flat_values, lengths.flat_values)
  # One token more than max_length: inputs and labels are shifted by one.
  return captions[:, :max_length + 1].to_tensor(), lengths.row_lengths()


def _split_captions(batch, grid, max_length, dtype):
  """A batch of images -> one (image, tokens) row per caption, the image in
  the cache's dtype: with float16, half the bytes go through the repeat,
  the shuffle buffer and the batching (float32 only per batch,
  _shift_and_widen)."""
  captions, per_image = _caption_tokens(batch, max_length)
  images = stored_features(batch[features.IMAGE_FEATURES], grid, dtype)
  images = tf.repeat(images, per_image, axis=0)
  return tf.data.Dataset.from_tensor_slices((images, captions))


def _shift_and_widen(images, tokens):
  """A padded batch of pairs, images (b, h, w, c) in the cache's dtype and
  tokens (b, t + 1) -> ((float32 images, input tokens (b, t)), label tokens
  (b, t)). Per batch, not per pair: a fifth less of the pipeline's CPU
  (BENCHMARKS.md, "Training input pipeline"). A caption's last input may
  now be its [END] rather than padding: that position's label is padding,
  which the loss ignores, and no other position sees it (causal), so the
  loss and gradients are the same."""
  return (tf.cast(images, tf.float32), tokens[:, :-1]), tokens[:, 1:]


def _read(file_pattern, data_accessor, schema):
  return data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(batch_size=_READ_BATCH, num_epochs=1,
                                     shuffle=False),
      schema)


def caption_pairs(file_pattern, data_accessor, schema, grid, batch_size,
                  max_length, shuffle_buffer=0, repeat=True, seed=None,
                  dtype=features.DEFAULT_FEATURE_DTYPE):
  """((image (b, h, w, c), input tokens (b, t)), label tokens (b, t)).

  `dtype`: how the cache stores the features (`features.dtype`).
  """
  dataset = _read(file_pattern, data_accessor, schema)
  dataset = dataset.flat_map(lambda b: _split_captions(b, grid, max_length,
                                                    dtype))
  if repeat:
    dataset = dataset.repeat()
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
  dataset = dataset.padded_batch(batch_size).map(_shift_and_widen)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  return without_autotuning(dataset.with_options(_SHARD_BY_DATA))


def caption_labels(file_pattern, data_accessor, schema, batch_size,
                   max_length):
  """The label tokens (b, t) of caption_pairs(..., repeat=False), batch for
  batch (the same rows, padding included), without parsing, decoding and
  repeating every image's feature grid (7x7x1280 on Flickr8k), which
  label_statistics and count_pairs do not read."""
  captions_only = schema_pb2.Schema()
  captions_only.CopyFrom(schema)
  del captions_only.feature[:]
  captions_only.feature.extend(
      f for f in schema.feature
      if f.name in (features.CAPTION_TOKENS, features.CAPTION_LENGTHS))
  dataset = _read(file_pattern, data_accessor, captions_only)
  dataset = dataset.flat_map(lambda b: tf.data.Dataset.from_tensor_slices(
      _caption_tokens(b, max_length)[0]))
  dataset = dataset.padded_batch(batch_size).map(lambda tokens: tokens[:, 1:])
  return without_autotuning(dataset.prefetch(tf.data.AUTOTUNE))


def _labels(element):
  """The labels of a caption_pairs or caption_labels element."""
  return element[1] if isinstance(element, tuple) else element


def label_counts(dataset, vocab_size, max_batches=None) -> np.ndarray:
  """How often each token id is a label, over (up to) a pass of the data."""
  return label_statistics(dataset, vocab_size, max_batches)[0]


def label_statistics(dataset, vocab_size, max_batches=None):
  """(label counts per token id, number of caption pairs) over (up to) a
  pass of the data (caption_pairs or caption_labels)."""
  counts = np.zeros(vocab_size, np.int64)
  pairs = 0
  for i, element in enumerate(dataset):
    if max_batches is not None and i >= max_batches:
      break
    labels = _labels(element)
    pairs += int(labels.shape[0])
    ids = labels.numpy().ravel()
    counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
  return counts, pairs


def count_pairs(dataset) -> int:
  """Caption pairs in a pass of caption_pairs or caption_labels."""
  return sum(int(_labels(element).shape[0]) for element in dataset)
