"""Reference decoders the tests (and benchmarks/decode.py) compare the cached
decoder (trainer/models/base.py) against."""

import tensorflow as tf

from core import text


def decode_full_prefix(captioner, image, max_length=None, temperature=0.0,
                       seed=0):
  """The tutorial's way, in the graph: re-run the model on the whole prefix
  (a fixed-size buffer; the causal mask hides the unused tail) for every new
  token, choosing it as the cached decoder does. image (b, h, w, c) -> ids
  (b, max_length - 1). The reference the cached decoder must equal."""
  max_length = min(max_length or captioner.max_length, captioner.max_length)
  batch = tf.shape(image)[0]
  tokens = tf.concat(
      [tf.fill([batch, 1], tf.constant(text.START_ID, tf.int64)),
       tf.zeros([batch, max_length - 1], tf.int64)], axis=1)
  done = tf.zeros([batch], tf.bool)

  def step(i, tokens, done):
    logits = captioner((image, tokens), training=False)    # (b, T, v)
    next_id = captioner.choose_token(logits[:, i - 1, :], i, temperature,
                                     seed)
    next_id = tf.where(done, tf.zeros_like(next_id), next_id)
    tokens = tf.tensor_scatter_nd_update(
        tokens, tf.stack([tf.range(batch), tf.fill([batch], i)], axis=1),
        next_id)
    return i + 1, tokens, done | tf.equal(next_id, text.END_ID)

  _, tokens, _ = tf.while_loop(
      lambda i, tokens, done: (i < max_length) & ~tf.reduce_all(done),
      step, (tf.constant(1), tokens, done))
  return tokens[:, 1:]
