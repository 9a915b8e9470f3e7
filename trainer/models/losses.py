"""The training loss and metric of every captioner (task.py compiles them)."""

import keras
import tensorflow as tf

from core import text

# Losses this large come from banned tokens (layers.BANNED_BIAS) as labels;
# they are left out.
_LOSS_CEILING = 1e8


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
