"""A tiny untrained captioner with the `patches` extractor, exported as the
pipeline exports (trainer/export.py) in a few seconds, for tests that need a
real SavedModel but not a trained one (test_serving, test_caption_dataset)."""

import os
import types

import numpy as np

IMAGE_SIZE, PATCH_SIZE = 32, 16
WORDS = ("a", "dog", "cat", "on", "the", "grass", "red", "ball", "runs",
         "sits", "in", "park")
MAX_LENGTH = 8


def build_and_export(root: str) -> types.SimpleNamespace:
  """Exports the model to <root>/model/1; returns path, captioner,
  extractor, spec and vocab_path."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from core import extractors  # pylint: disable=g-import-not-at-top
  from core import text  # pylint: disable=g-import-not-at-top
  from trainer import export as export_lib  # pylint: disable=g-import-not-at-top
  from trainer.models import transformer  # pylint: disable=g-import-not-at-top
  os.makedirs(root, exist_ok=True)
  vocab_path = os.path.join(root, "vocab.txt")
  with open(vocab_path, "w") as f:
    f.write("\n".join(text.RESERVED_TOKENS + WORDS) + "\n")
  vocab_size = len(text.RESERVED_TOKENS) + len(WORDS)
  spec = extractors.extractor_spec("patches", IMAGE_SIZE, PATCH_SIZE)
  extractor = extractors.build_extractor(spec, "none", PATCH_SIZE)
  tf.keras.utils.set_random_seed(0)
  counts = np.ones(vocab_size)
  counts[text.END_ID] = 1e-3  # rare [END]: long captions, easy to tell apart
  captioner = transformer.Captioner(
      vocab_size, spec.grid, num_layers=1, units=16, num_heads=2,
      dropout_rate=0.0, max_length=MAX_LENGTH, label_counts=counts)
  captioner((np.zeros((1, *spec.grid), np.float32),
             np.full((1, 1), text.START_ID, np.int64)))
  path = os.path.join(root, "model", "1")
  export_lib.export(path, captioner, extractor, spec.image_size, vocab_path,
                    MAX_LENGTH)  # default max_pixels, as the pipeline exports
  return types.SimpleNamespace(path=path, captioner=captioner,
                               extractor=extractor, spec=spec,
                               vocab_path=vocab_path)


def export(root: str) -> str:
  """Exports the model to <root>/model/1 and returns that folder."""
  return build_and_export(root).path
