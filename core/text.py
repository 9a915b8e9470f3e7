"""Caption text normalization: one definition, in TensorFlow and in Python.

Training (the Transform graph) uses `tf_normalize`; BLEU scoring, which works
on Python strings, uses `normalize`. Both NFKC-normalize, lowercase, replace
every character that is not a letter, digit or whitespace with a space, and
split on whitespace, so scored references are tokenized exactly as trained.
"""

import re
import unicodedata

# Special tokens, in vocabulary order: ids 0..3 (see trainer/preprocessing.py).
PAD, UNK, START, END = "[PAD]", "[UNK]", "[START]", "[END]"
RESERVED_TOKENS = (PAD, UNK, START, END)
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3

# Anything that is neither a letter/digit (\w minus underscore) nor space.
_PY_STRIP = re.compile(r"[^\w\s]|_", re.UNICODE)
_TF_STRIP = r"[^\pL\pN\s]"


def normalize(caption: str) -> list:
  """Python tokenization of a caption, identical to `tf_normalize`'s."""
  text = unicodedata.normalize("NFKC", caption).lower()
  return _PY_STRIP.sub(" ", text).split()


def tf_normalize(captions):
  """A string tensor of captions -> the same normalized, space-joined text."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
  text = tf_text.normalize_utf8(captions, "NFKC")
  text = tf.strings.lower(text, encoding="utf-8")
  text = tf.strings.regex_replace(text, _TF_STRIP, " ")
  return text


def read_vocabulary(path: str) -> list:
  """The transform graph's vocabulary file: one token per line, by id."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path) as f:
    return [line.rstrip("\n") for line in f]


def ids_to_caption(ids, vocabulary) -> str:
  """Token ids -> words up to the first [END], special tokens dropped."""
  words = []
  for i in ids:
    if i == END_ID:
      break
    if i > END_ID:
      words.append(vocabulary[i] if i < len(vocabulary) else UNK)
  return " ".join(words)
