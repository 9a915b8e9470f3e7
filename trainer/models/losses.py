"""The training loss and metric of every captioner (task.py compiles them)."""

import keras
import tensorflow as tf

from core import text

# Losses this large come from banned tokens (layers.BANNED_BIAS) as labels;
# they are left out.
_LOSS_CEILING = 1e8


def masked_loss(labels, logits):
  """Sparse cross-entropy over real (non-padding) label tokens: the mean over
  the global batch's tokens, whatever the number of replicas.

  Under a distribution strategy each replica returns its tokens' loss sum
  over the count of every replica's tokens, so the replicas' gradients,
  which the optimizer sums, add up to the global mean's. Keras 3 divides a
  loss by the replica count only when it reduces a per-example loss itself
  (a scalar like this one is left alone) yet multiplies every loss by that
  count for the reported value: dividing by the local count instead made
  two replicas report, and step by, twice one device's loss.
  """
  loss = keras.losses.sparse_categorical_crossentropy(
      labels, logits, from_logits=True)
  mask = tf.cast((labels != text.PAD_ID) & (loss < _LOSS_CEILING), loss.dtype)
  tokens = tf.reduce_sum(mask)
  replica = tf.distribute.get_replica_context()
  if replica is not None and replica.num_replicas_in_sync > 1:
    tokens = replica.all_reduce(tf.distribute.ReduceOp.SUM, tokens)
  return tf.reduce_sum(loss * mask) / tf.maximum(tokens, 1.0)


def masked_accuracy(labels, logits):
  """Share of real label tokens predicted exactly."""
  predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
  mask = tf.cast(labels != text.PAD_ID, tf.float32)
  hits = tf.cast(predicted == labels, tf.float32) * mask
  return tf.reduce_sum(hits) / tf.maximum(tf.reduce_sum(mask), 1.0)
