"""Input pipeline: transformed examples -> (image grid, tokens) training pairs."""

import numpy as np
import tensorflow as tf
from tfx_bsl.public import tfxio

# Images read per TFXIO batch before they are split into caption pairs.
_READ_BATCH = 32


def decode_features(features_bytes, grid):
  """float16 feature bytes [b] -> float32 image grids [b, h, w, c]."""
  flat = tf.io.decode_raw(features_bytes, tf.float16)
  return tf.cast(tf.reshape(flat, [-1, *grid]), tf.float32)


def _split_captions(batch, grid, max_length):
  """A batch of images -> one (image, tokens) row per caption."""
  tokens = tf.RaggedTensor.from_sparse(batch["caption_tokens"])
  lengths = tf.RaggedTensor.from_sparse(batch["caption_lengths"])
  captions = tf.RaggedTensor.from_row_lengths(     # (captions, (tokens))
      tokens.flat_values, lengths.flat_values)
  images = decode_features(batch["image_features"], grid)
  images = tf.repeat(images, lengths.row_lengths(), axis=0)
  # One token more than max_length: inputs and labels are shifted by one.
  captions = captions[:, :max_length + 1].to_tensor()
  return tf.data.Dataset.from_tensor_slices((images, captions))


def _shift(image, tokens):
  return (image, tokens[:-1]), tokens[1:]


def caption_pairs(file_pattern, data_accessor, schema, grid, batch_size,
                  max_length, shuffle_buffer=0, repeat=True, seed=None):
  """((image (b, h, w, c), input tokens (b, t)), label tokens (b, t))."""
  dataset = data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(batch_size=_READ_BATCH, num_epochs=1,
                                     shuffle=False),
      schema)
  dataset = dataset.flat_map(lambda b: _split_captions(b, grid, max_length))
  if repeat:
    dataset = dataset.repeat()
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
  dataset = dataset.map(_shift, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.padded_batch(batch_size).prefetch(tf.data.AUTOTUNE)


def label_counts(dataset, vocab_size, max_batches=None) -> np.ndarray:
  """How often each token id is a label, over (up to) a pass of the data."""
  counts = np.zeros(vocab_size, np.int64)
  for i, (_, labels) in enumerate(dataset):
    if max_batches is not None and i >= max_batches:
      break
    ids = labels.numpy().ravel()
    counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
  return counts
