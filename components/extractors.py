"""Image feature extractors, shared by feature caching and the serving graph.

The same `load_image` and extractor model run in the Beam job that caches
features and inside the exported SavedModel, so cached and served features
can never be computed differently.
"""

import dataclasses
import os
from typing import Optional

import keras
import tensorflow as tf

WEIGHTS_NONE = "none"
WEIGHTS_IMAGENET = "imagenet"
# Seed for `weights: none`: random but reproducible, so every Beam worker and
# the exported model build the same network (the weights are saved too).
RANDOM_WEIGHTS_SEED = 1234


@dataclasses.dataclass(frozen=True)
class ExtractorSpec:
  name: str
  image_size: int           # square input side in pixels
  grid: tuple               # output feature grid (h, w, c)


def extractor_spec(name: str, patch_image_size: int = 128,
                   patch_size: int = 16) -> ExtractorSpec:
  """The input size and feature grid of an extractor, by name."""
  if name == "mobilenet_v3_small":
    return ExtractorSpec(name, 224, (7, 7, 576))
  if name == "patches":
    if patch_image_size % patch_size:
      raise ValueError(f"patch_image_size {patch_image_size} is not a "
                       f"multiple of patch_size {patch_size}")
    side = patch_image_size // patch_size
    return ExtractorSpec(name, patch_image_size,
                         (side, side, patch_size * patch_size * 3))
  raise ValueError(f"unknown extractor {name!r}; choose one of: "
                   "mobilenet_v3_small, patches")


def load_image(image_bytes, image_size: int):
  """JPEG/PNG/BMP/GIF bytes -> float32 RGB [size, size, 3] in [0, 255].

  Grayscale and RGBA are converted to RGB by `channels=3`.
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image = tf.image.resize(image, (image_size, image_size), antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0)


class PatchExtractor(keras.layers.Layer):
  """Cuts images into non-overlapping patches of raw pixels in [0, 1]."""

  def __init__(self, patch_size: int, **kwargs):
    super().__init__(**kwargs)
    self.patch_size = patch_size

  def call(self, images):
    # images: (b, H, W, 3) in [0, 255] -> (b, H/p, W/p, p*p*3)
    p = self.patch_size
    return tf.image.extract_patches(
        images / 255.0, sizes=[1, p, p, 1], strides=[1, p, p, 1],
        rates=[1, 1, 1, 1], padding="VALID")

  def get_config(self):
    return {**super().get_config(), "patch_size": self.patch_size}


def _imagenet_error(name: str, error: Exception) -> RuntimeError:
  return RuntimeError(
      f"could not download the ImageNet weights of {name} ({error}). This "
      "machine seems to be offline. Download them where you have internet "
      f"(python -c \"import keras; keras.applications.MobileNetV3Small("
      f"include_top=False, input_shape=(224, 224, 3)).save_weights("
      f"'{name}.weights.h5')\") and set `features.weights` to that file, or "
      "use `weights: none` for random (untrained) features.")


def build_extractor(spec: ExtractorSpec, weights: str = WEIGHTS_NONE,
                    patch_size: int = 16) -> keras.Model:
  """A Keras model: float32 images [b, S, S, 3] in [0, 255] -> features.

  `weights` is "imagenet" (downloaded by Keras), a path to a Keras weights
  file (`.weights.h5`, local or gs://), or "none" (seeded random init).
  """
  if spec.name == "patches":
    inputs = keras.Input((spec.image_size, spec.image_size, 3), name="images")
    return keras.Model(inputs, PatchExtractor(patch_size)(inputs),
                       name="patches")
  if spec.name != "mobilenet_v3_small":
    raise ValueError(f"unknown extractor {spec.name!r}")
  keras_weights = WEIGHTS_IMAGENET if weights == WEIGHTS_IMAGENET else None
  if keras_weights is None:
    keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
  try:
    # include_preprocessing: the network rescales [0, 255] itself.
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(spec.image_size, spec.image_size, 3), include_top=False,
        weights=keras_weights, include_preprocessing=True)
  except Exception as e:  # pylint: disable=broad-except
    if keras_weights == WEIGHTS_IMAGENET:
      raise _imagenet_error(spec.name, e) from e
    raise
  model = backbone
  if weights not in (WEIGHTS_NONE, WEIGHTS_IMAGENET):
    if not tf.io.gfile.exists(weights):
      raise FileNotFoundError(
          f"extractor weights file {weights!r} does not exist; give a Keras "
          "weights file (.weights.h5), 'imagenet' or 'none'")
    model.load_weights(weights)
  return model


def save_extractor_weights(model: keras.Model, directory: str
                           ) -> Optional[str]:
  """Saves the extractor's weights (if it has any) into `directory`."""
  if not model.weights:
    return None
  tf.io.gfile.makedirs(directory)
  path = os.path.join(directory, "extractor.weights.h5")
  if "://" in path:  # Keras writes h5 locally; copy to remote storage.
    local = os.path.join("/tmp", os.path.basename(path))
    model.save_weights(local)
    tf.io.gfile.copy(local, path, overwrite=True)
  else:
    model.save_weights(path)
  return path
