"""Captions from an exported or pushed SavedModel, through its signatures.

`captioner caption`, the end of `captioner run` and the tests load the model
the way a serving client does: the SavedModel folder (or the newest
numbered version under a serving folder, as TF Serving picks it), image
bytes in, the signature's caption out (signature names: core/features.py).
TensorFlow is imported inside the functions, so importing this is cheap.
"""

import os
from typing import List, Optional, Sequence

from core import features


class CaptionError(ValueError):
  """The model or the request cannot give captions; the message says why
  and names the option to change."""


def latest_version_dir(serving_dir: str) -> Optional[str]:
  """The newest pushed model version folder, or None."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.isdir(serving_dir):
    return None
  versions = [v.rstrip("/") for v in tf.io.gfile.listdir(serving_dir)
              if v.rstrip("/").isdigit()]
  if not versions:
    return None
  return os.path.join(serving_dir, max(versions, key=int))


def model_version_dir(model_dir: str) -> str:
  """A SavedModel folder, or the newest version under a serving folder."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
    return model_dir
  newest = latest_version_dir(model_dir)
  if newest is None or not tf.io.gfile.exists(
      os.path.join(newest, "saved_model.pb")):
    raise CaptionError(f"--model {model_dir}: no saved_model.pb there nor in "
                       "a numbered version folder under it (pass a pushed "
                       "model, e.g. build/serving or build/serving/<version>)")
  return newest


# Images per call of a signature: the extractor's activations grow with the
# batch (a thousand 224-pixel photos in one MobileNetV2 call took 16 GB).
DEFAULT_BATCH_SIZE = 16


def caption_files(model_dir: str, paths: Sequence[str], beam: int = 0,
                  length_penalty: float = 0.0, temperature: float = 0.0,
                  seed: int = 0,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> List[str]:
  """Captions of image files: greedy (serving_default), beam search of width
  `beam`, or sampled at `temperature` (signature sample, seeded)."""
  return list(iter_captions(model_dir, paths, beam, length_penalty,
                            temperature, seed, batch_size))


def iter_captions(model_dir: str, paths: Sequence[str], beam: int = 0,
                  length_penalty: float = 0.0, temperature: float = 0.0,
                  seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE):
  """caption_files' captions one at a time, in the order of `paths`, as each
  batch of `batch_size` files is captioned (the model is loaded once)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if beam and temperature:
    raise CaptionError("choose --beam or --temperature, not both")
  if beam < 0 or temperature < 0:
    raise CaptionError("--beam and --temperature must not be negative")
  if batch_size < 1:
    raise CaptionError("--batch-size must be at least 1")
  model_dir = model_version_dir(model_dir)
  model = tf.saved_model.load(model_dir)
  if beam:
    if features.BEAM_SEARCH not in model.signatures:
      raise CaptionError(f"{model_dir} has no {features.BEAM_SEARCH} "
                         "signature (only models with an incremental decoder "
                         "export one)")
    signature = model.signatures[features.BEAM_SEARCH]
    options = dict(beam_width=tf.constant(beam, tf.int32),
                   length_penalty=tf.constant(length_penalty, tf.float32))
  elif temperature:
    if features.SAMPLE not in model.signatures:
      raise CaptionError(f"{model_dir} has no {features.SAMPLE} signature "
                         "(exported before sampling was served): retrain or "
                         "re-export")
    signature = model.signatures[features.SAMPLE]
    options = dict(temperature=tf.constant(temperature, tf.float32),
                   seed=tf.constant(seed, tf.int32))
  else:
    signature = model.signatures[features.SERVING_DEFAULT]
    options = {}
  for start in range(0, len(paths), batch_size):
    images = tf.constant([tf.io.gfile.GFile(p, "rb").read()
                          for p in paths[start:start + batch_size]])
    out = signature(**{features.IMAGE_BYTES: images}, **options)
    yield from (c.decode("utf-8") for c in out[features.CAPTION].numpy())
