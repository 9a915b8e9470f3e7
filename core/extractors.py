"""Image feature extractors, shared by feature caching and the serving graph.

The same `load_image` and extractor model run in the Beam job that caches
features and inside the exported SavedModel, so cached and served features
can never be computed differently.
"""

import collections
import dataclasses
import hashlib
import io
import os
import tempfile
import warnings
from typing import Optional

import keras
import tensorflow as tf

WEIGHTS_NONE = "none"
WEIGHTS_IMAGENET = "imagenet"
# Seed for `weights: none`: random but reproducible, so every Beam worker and
# the exported model build the same network (the weights are saved too).
RANDOM_WEIGHTS_SEED = 1234
# The pretrained network inside an extractor model; weights files hold only
# its weights, exactly as `keras.applications.X(...).save_weights()` writes.
BACKBONE = "backbone"


@dataclasses.dataclass(frozen=True)
class _Backbone:
  application: str          # keras.applications constructor
  image_size: int
  grid: tuple               # at alpha 1.0
  # InceptionV3 and MobileNet v1/v2 expect [-1, 1] (their preprocess_input);
  # MobileNetV3 rescales [0, 255] itself (include_preprocessing=True).
  scale_to_unit_range: bool
  # Whether the constructor takes a width multiplier `alpha`.
  has_alpha: bool = False

  def channels(self, alpha: float) -> int:
    """The last feature map's depth at width multiplier `alpha`."""
    depth = self.grid[2]
    if self.application == "MobileNetV2":
      # Keras keeps the last 1x1 conv at 1280 unless alpha > 1.
      return int(depth * alpha) if alpha > 1.0 else depth
    if self.application == "MobileNet":
      return int(depth * alpha)
    return depth


_BACKBONES = {
    "inception_v3": _Backbone("InceptionV3", 299, (8, 8, 2048), True),
    "mobilenet": _Backbone("MobileNet", 224, (7, 7, 1024), True,
                           has_alpha=True),
    "mobilenet_v2": _Backbone("MobileNetV2", 224, (7, 7, 1280), True,
                              has_alpha=True),
    "mobilenet_v3_small": _Backbone("MobileNetV3Small", 224, (7, 7, 576),
                                    False),
    "mobilenet_v3_large": _Backbone("MobileNetV3Large", 224, (7, 7, 960),
                                    False),
}
NAMES = tuple(sorted(_BACKBONES)) + ("patches",)
# Width multipliers keras.applications has ImageNet weights for.
ALPHAS = {"mobilenet": (0.25, 0.5, 0.75, 1.0),
          "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)}


@dataclasses.dataclass(frozen=True)
class ExtractorSpec:
  name: str
  image_size: int           # square input side in pixels
  grid: tuple               # output feature grid (h, w, c)
  alpha: float = 1.0        # width multiplier (MobileNet v1/v2)


def extractor_spec(name: str, patch_image_size: int = 128,
                   patch_size: int = 16, alpha: float = 1.0
                   ) -> ExtractorSpec:
  """The input size and feature grid of an extractor, by name."""
  if name in _BACKBONES:
    backbone = _BACKBONES[name]
    if not backbone.has_alpha:
      if alpha != 1.0:
        raise ValueError(f"features.alpha {alpha}: {name} has no width "
                         "multiplier; leave alpha at 1.0")
    elif alpha not in ALPHAS[name]:
      raise ValueError(f"features.alpha {alpha} is not one of {name}'s "
                       f"widths: {', '.join(map(str, ALPHAS[name]))}")
    h, w, _ = backbone.grid
    return ExtractorSpec(name, backbone.image_size,
                         (h, w, backbone.channels(alpha)), float(alpha))
  if name == "patches":
    if patch_image_size % patch_size:
      raise ValueError(f"patch_image_size {patch_image_size} is not a "
                       f"multiple of patch_size {patch_size}")
    side = patch_image_size // patch_size
    return ExtractorSpec(name, patch_image_size,
                         (side, side, patch_size * patch_size * 3))
  raise ValueError(f"unknown extractor {name!r}; choose one of: "
                   f"{', '.join(NAMES)}")


def image_size_of(image_bytes: bytes) -> Optional[tuple]:
  """(width, height) from the image header, without decoding the pixels.

  None when Pillow does not know the format (TensorFlow may still decode it).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(image_bytes)) as image:
      return image.size
  except Image.DecompressionBombError:
    # Pillow's own guard fires on open above twice its limit; the header
    # was read, but Pillow does not hand the size back. It is huge.
    return (2**31 - 1, 1)
  except Exception:  # pylint: disable=broad-except
    return None


def resize_for_network(image, image_size: int):
  """uint8 RGB [h, w, 3] -> float32 [size, size, 3] in [0, 255]: the
  antialiased resize every path into the extractor uses (`load_image`, and
  the feature cache's decode for an image of another size)."""
  return tf.clip_by_value(
      tf.image.resize(image, (image_size, image_size), antialias=True),
      0.0, 255.0)


def load_image(image_bytes, image_size: int):
  """JPEG/PNG/BMP/GIF/WebP bytes -> float32 RGB [size, size, 3] in [0, 255].

  Grayscale, RGBA, palette and CMYK images become RGB (`channels=3`), 16-bit
  PNGs are scaled to 8 bits; the format comes from the bytes, not the name.
  An image already at `image_size` skips the resize, which is then the
  identity (the antialiased "triangle" kernel at scale 1 weighs each pixel
  by exactly 1 and its neighbours by 0) and cost 2-3 ms of a 224-px photo's
  4 ms: same values bit for bit, less work.
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  shape = tf.shape(image)
  at_size = tf.logical_and(tf.equal(shape[0], image_size),
                           tf.equal(shape[1], image_size))
  return tf.cond(
      at_size,
      lambda: tf.reshape(tf.cast(image, tf.float32),
                         (image_size, image_size, 3)),
      lambda: resize_for_network(image, image_size))


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


class WeightsUnavailableError(RuntimeError):
  """The ImageNet weights Keras could not download (an offline machine)."""


def _imagenet_error(spec: ExtractorSpec,
                    error: Exception) -> WeightsUnavailableError:
  application = _BACKBONES[spec.name].application
  size = spec.image_size
  return WeightsUnavailableError(
      f"could not download the ImageNet weights of {spec.name} ({error}). "
      "This machine seems to be offline. Download them where you have "
      f"internet (python -c \"import keras; keras.applications.{application}("
      f"include_top=False, input_shape=({size}, {size}, 3)).save_weights("
      f"'{spec.name}.weights.h5')\"), copy the file here and set "
      "`features.weights` (or --weights) to its path, or use `weights: none` "
      "for random (untrained) features.")


def _backbone(model: keras.Model) -> keras.Model:
  return model.get_layer(BACKBONE)


def build_extractor(spec: ExtractorSpec, weights: str = WEIGHTS_NONE,
                    patch_size: int = 16) -> keras.Model:
  """A Keras model: float32 images [b, S, S, 3] in [0, 255] -> features.

  `weights` is "imagenet" (downloaded by Keras), a path to a Keras weights
  file of the backbone (`.weights.h5`, local or gs://), or "none" (seeded
  random init).
  """
  inputs = keras.Input((spec.image_size, spec.image_size, 3), name="images")
  if spec.name == "patches":
    return keras.Model(inputs, PatchExtractor(patch_size)(inputs),
                       name="patches")
  if spec.name not in _BACKBONES:
    raise ValueError(f"unknown extractor {spec.name!r}")
  if weights not in (WEIGHTS_NONE, WEIGHTS_IMAGENET):
    if not tf.io.gfile.exists(weights):
      raise FileNotFoundError(
          f"extractor weights file {weights!r} does not exist; give a Keras "
          "weights file (.weights.h5), 'imagenet' or 'none'")
  config = _BACKBONES[spec.name]
  keras_weights = WEIGHTS_IMAGENET if weights == WEIGHTS_IMAGENET else None
  if keras_weights is None:
    keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
  kwargs = {} if config.scale_to_unit_range else {
      "include_preprocessing": True}
  if config.has_alpha:
    kwargs["alpha"] = spec.alpha
  try:
    backbone = getattr(keras.applications, config.application)(
        input_shape=(spec.image_size, spec.image_size, 3), include_top=False,
        weights=keras_weights, name=BACKBONE, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    if keras_weights == WEIGHTS_IMAGENET:
      raise _imagenet_error(spec, e) from e
    raise
  if weights not in (WEIGHTS_NONE, WEIGHTS_IMAGENET):
    _load_weights(backbone, weights, spec)
  x = inputs
  if config.scale_to_unit_range:
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(x)
  return keras.Model(inputs, backbone(x), name=spec.name)


class WeightsMismatchError(ValueError):
  """A weights file that is not the configured network's."""


def _describe(spec: ExtractorSpec, model: keras.Model) -> str:
  application = _BACKBONES[spec.name].application
  alpha = f", alpha={spec.alpha}" if _BACKBONES[spec.name].has_alpha else ""
  return (f"the weights of keras.applications.{application}("
          f"include_top=False, input_shape=({spec.image_size}, "
          f"{spec.image_size}, 3){alpha}), {len(model.weights)} arrays")


def _array_shapes(path: str) -> collections.Counter:
  """The shapes of every array in a Keras HDF5 weights file (Keras 3's
  .weights.h5 or the legacy .h5), counted."""
  import h5py  # pylint: disable=g-import-not-at-top
  shapes = collections.Counter()
  try:
    with h5py.File(path, "r") as f:
      f.visititems(lambda _, item: shapes.update([tuple(item.shape)])
                   if isinstance(item, h5py.Dataset) else None)
  except OSError as e:
    raise WeightsMismatchError(
        f"features.weights {path!r} is not a Keras weights file (HDF5): "
        f"{e}") from None
  return shapes


def _load_weights(model: keras.Model, path: str, spec: ExtractorSpec
                  ) -> None:
  """Loads a backbone's weights file, or says which network it did not fit.

  Keras' own errors list every layer it could not match (a hundred lines)
  and never name the setting; this names `features.weights` and what the
  configured extractor expects.
  """

  def load(local):
    # Keras loads a file of another network with warnings only, leaving
    # layers it finds no group for at their random init: compare the
    # file's arrays with the network's weights first.
    expected = collections.Counter(tuple(w.shape) for w in model.weights)
    found = _array_shapes(local)
    if found != expected:
      raise WeightsMismatchError(
          f"features.weights {path!r} does not fit extractor {spec.name!r}: "
          f"expected {_describe(spec, model)}; the file holds "
          f"{sum(found.values())} arrays of other shapes")
    try:
      with warnings.catch_warnings():
        # Keras warns per layer it skips, then raises: our error says it.
        warnings.simplefilter("ignore")
        model.load_weights(local)
    except Exception as e:  # pylint: disable=broad-except
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(
          e).__name__
      raise WeightsMismatchError(
          f"features.weights {path!r} does not fit extractor {spec.name!r}: "
          f"expected {_describe(spec, model)} (a file saved by that "
          f"constructor's save_weights(), or Keras' own '{spec.name}' "
          f"download); Keras said: {first[:300]}") from None

  if "://" in path:  # Keras reads h5 from local files only.
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, os.path.basename(path))
      tf.io.gfile.copy(path, local)
      load(local)
  else:
    load(path)


def weights_checksum(weights: str) -> str:
  """What identifies `weights`: "sha256:<hex>" of a weights file's bytes
  (local or any Beam filesystem, e.g. gs://), else the value itself
  ("imagenet", "none": seeded random weights)."""
  if weights in (WEIGHTS_IMAGENET, WEIGHTS_NONE, ""):
    return weights or WEIGHTS_NONE
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  with FileSystems.open(weights, compression_type="uncompressed") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return "sha256:" + digest.hexdigest()


# Beside a served model (<SavedModel>/assets.extra/, where TF Serving keeps
# files it does not load): the provenance of the features it was trained on.
PROVENANCE_FILE = "features.json"


def provenance(extractor: str, weights: str, dtype: str, alpha: float,
               patch_image_size: int, patch_size: int) -> dict:
  """What features are: the network and its weights, the input size, the
  grid and the stored dtype. Two feature caches, or a cache and a model,
  are interchangeable only when these are equal."""
  spec = extractor_spec(extractor, patch_image_size, patch_size, alpha)
  made = {"extractor": extractor, "image_size": spec.image_size,
          "grid": list(spec.grid), "feature_dtype": dtype,
          "weights_checksum": weights_checksum(weights)}
  if extractor == "patches":
    made["patch_size"] = patch_size
  if extractor in ALPHAS:
    made["alpha"] = alpha
  return made


def save_extractor_weights(model: keras.Model, directory: str
                           ) -> Optional[str]:
  """Saves the backbone's weights (if it has any) into `directory`."""
  if not model.weights:
    return None
  tf.io.gfile.makedirs(directory)
  path = os.path.join(directory, "extractor.weights.h5")
  if "://" in path:  # Keras writes h5 locally; copy to remote storage.
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, os.path.basename(path))
      _backbone(model).save_weights(local)
      tf.io.gfile.copy(local, path, overwrite=True)
  else:
    _backbone(model).save_weights(path)
  return path
