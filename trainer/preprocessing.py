"""The Transform component's preprocessing_fn: captions -> token ids.

Each caption is normalized (NFKC, lowercase, punctuation to spaces; see
core/text.py), whitespace-tokenized with tensorflow-text, mapped to ids
with a vocabulary that tf.Transform computes over the training split, and
wrapped in [START] ... [END]. The vocabulary file is an asset of the
transform graph (named VOCAB_NAME); the trainer and the serving model read it
from there.

Outputs, per image (SparseTensors are VarLen features):
  image_id, image_features, image_features_shape   passed through
  caption_tokens    int64 (sparse)  every caption's ids, concatenated
  caption_lengths   int64 (sparse)  the length of each caption in tokens
"""

import tensorflow as tf
import tensorflow_text as tf_text
import tensorflow_transform as tft

from core import features
from core import text

VOCAB_NAME = "caption_vocab"
DEFAULT_MAX_TOKENS = 5000
DEFAULT_FREQUENCY_THRESHOLD = 1


def _ragged(x) -> tf.RaggedTensor:
  """Dense [b, n] or sparse [b, None] -> ragged [b, (n)]."""
  if isinstance(x, tf.SparseTensor):
    return tf.RaggedTensor.from_sparse(x)
  if isinstance(x, tf.RaggedTensor):
    return x
  return tf.RaggedTensor.from_tensor(x)


def _first(x):
  """A one-value-per-example feature, dense or sparse -> dense [b]."""
  return _ragged(x).to_tensor()[:, 0]


def tokenize(captions: tf.Tensor) -> tf.RaggedTensor:
  """Caption strings [n] -> words ragged [n, (words)]."""
  return tf_text.WhitespaceTokenizer().tokenize(text.tf_normalize(captions))


def preprocessing_fn(inputs, custom_config=None):
  custom_config = custom_config or {}
  captions = _ragged(inputs[features.CAPTIONS])           # (b, (captions))
  words = tokenize(captions.flat_values)                  # (n, (words))
  threshold = custom_config.get("frequency_threshold",
                                DEFAULT_FREQUENCY_THRESHOLD)
  vocab = tft.vocabulary(
      words,
      top_k=custom_config.get("max_tokens", DEFAULT_MAX_TOKENS),
      # TFT warns that a threshold of 1 is a no-op and wants None instead.
      frequency_threshold=(None if threshold <= 1 else threshold),
      reserved_tokens=list(text.RESERVED_TOKENS),
      vocab_filename=VOCAB_NAME)
  ids = tft.apply_vocabulary(words, vocab, default_value=text.UNK_ID)
  n = ids.nrows()
  start = tf.fill([n, 1], tf.constant(text.START_ID, tf.int64))
  end = tf.fill([n, 1], tf.constant(text.END_ID, tf.int64))
  tokens = tf.concat([start, ids, end], axis=1)            # (n, (len))

  lengths = tf.RaggedTensor.from_row_lengths(             # (b, (captions))
      tokens.row_lengths(), captions.row_lengths())
  per_image = tf.RaggedTensor.from_row_lengths(           # (b, (tokens))
      tokens.flat_values, tf.reduce_sum(lengths, axis=1))
  return {
      features.IMAGE_ID: _first(inputs[features.IMAGE_ID]),
      features.IMAGE_FEATURES: _first(inputs[features.IMAGE_FEATURES]),
      features.IMAGE_FEATURES_SHAPE: _ragged(
          inputs[features.IMAGE_FEATURES_SHAPE]).to_sparse(),
      features.CAPTION_TOKENS: per_image.to_sparse(),
      features.CAPTION_LENGTHS: lengths.to_sparse(),
  }
