import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from core import extractors


def _jpeg(size=(50, 40), colour=(255, 0, 0)):
  buffer = io.BytesIO()
  Image.new("RGB", size, colour).save(buffer, "JPEG")
  return buffer.getvalue()


def test_load_image_resizes_and_converts_to_rgb():
  image = extractors.load_image(_jpeg(), 32).numpy()
  assert image.shape == (32, 32, 3)
  assert image[..., 0].mean() > 200 and image[..., 1].mean() < 40
  buffer = io.BytesIO()
  Image.new("L", (20, 20), 128).save(buffer, "PNG")
  assert extractors.load_image(buffer.getvalue(), 16).shape == (16, 16, 3)


def test_load_image_rejects_bytes_that_are_not_an_image():
  with pytest.raises(tf.errors.InvalidArgumentError):
    extractors.load_image(b"not an image", 16)


def test_patches_cut_the_image_into_a_grid_of_raw_pixels():
  spec = extractors.extractor_spec("patches", patch_image_size=64,
                                   patch_size=16)
  assert spec.grid == (4, 4, 768)
  model = extractors.build_extractor(spec, "none", patch_size=16)
  images = np.zeros((2, 64, 64, 3), np.float32)
  images[:, :16, :16, 0] = 255.0  # a red top-left patch
  grid = model(images).numpy()
  assert grid.shape == (2, 4, 4, 768)
  assert grid[0, 0, 0].reshape(16, 16, 3)[..., 0].min() == 1.0
  assert grid[0, 1:, 1:].max() == 0.0


def test_mobilenet_with_seeded_random_weights_is_reproducible():
  spec = extractors.extractor_spec("mobilenet_v3_small")
  assert spec.grid == (7, 7, 576)
  images = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3))
  first = extractors.build_extractor(spec, "none")
  second = extractors.build_extractor(spec, "none")
  assert first(images).shape == (1, 7, 7, 576)
  for a, b in zip(first.weights, second.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_local_weights_file_is_loaded(tmp_path):
  spec = extractors.extractor_spec("mobilenet_v3_small")
  model = extractors.build_extractor(spec, "none")
  model.weights[0].assign(tf.ones_like(model.weights[0]))
  path = extractors.save_extractor_weights(model, str(tmp_path))
  loaded = extractors.build_extractor(spec, path)
  np.testing.assert_array_equal(loaded.weights[0].numpy(),
                                np.ones(model.weights[0].shape))


def test_bad_names_and_missing_weights_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="unknown extractor 'resnet'"):
    extractors.extractor_spec("resnet")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    extractors.build_extractor(extractors.extractor_spec("mobilenet_v3_small"),
                               str(tmp_path / "missing.weights.h5"))


@pytest.mark.parametrize("name,application", [
    ("inception_v3", "InceptionV3"), ("mobilenet_v3_small", "MobileNetV3Small"),
    ("mobilenet_v3_large", "MobileNetV3Large"), ("mobilenet_v2", "MobileNetV2"),
    ("mobilenet", "MobileNet")])
def test_imagenet_weights_offline_fail_at_once_saying_what_to_do(name,
                                                                application):
  spec = extractors.extractor_spec(name)
  try:
    extractors.build_extractor(spec, "imagenet")
  except RuntimeError as e:
    assert "features.weights" in str(e) and ".weights.h5" in str(e)
    assert f"keras.applications.{application}(" in str(e)
  else:
    pytest.skip("online: the ImageNet weights downloaded")


@pytest.mark.parametrize("name,size,grid", [
    ("inception_v3", 299, (8, 8, 2048)),
    ("mobilenet_v3_small", 224, (7, 7, 576)),
    ("mobilenet_v3_large", 224, (7, 7, 960)),
    ("mobilenet_v2", 224, (7, 7, 1280)),
    ("mobilenet", 224, (7, 7, 1024))])
def test_backbones_give_the_documented_grid(name, size, grid):
  spec = extractors.extractor_spec(name)
  assert (spec.image_size, spec.grid) == (size, grid)
  model = extractors.build_extractor(spec, "none")
  assert model(np.zeros((1, size, size, 3), np.float32)).shape == (1, *grid)


def test_inception_sees_inputs_scaled_to_minus_one_one():
  spec = extractors.extractor_spec("inception_v3")
  model = extractors.build_extractor(spec, "none")
  images = np.random.default_rng(1).uniform(0, 255, (1, 299, 299, 3))
  backbone = model.get_layer(extractors.BACKBONE)
  np.testing.assert_allclose(
      model(images.astype(np.float32), training=False).numpy(),
      backbone((images / 127.5 - 1).astype(np.float32),
               training=False).numpy(), rtol=1e-4, atol=1e-6)


def test_a_weights_file_saved_by_keras_applications_loads(tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(99)
  application = keras.applications.MobileNetV3Large(
      include_top=False, weights=None, input_shape=(224, 224, 3))
  path = str(tmp_path / "mobilenet_v3_large.weights.h5")
  application.save_weights(path)
  model = extractors.build_extractor(
      extractors.extractor_spec("mobilenet_v3_large"), path)
  for ours, theirs in zip(model.get_layer(extractors.BACKBONE).weights,
                          application.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize("name,alpha,grid", [
    ("mobilenet_v2", 0.35, (7, 7, 1280)), ("mobilenet_v2", 1.4, (7, 7, 1792)),
    ("mobilenet", 0.25, (7, 7, 256)), ("mobilenet", 0.5, (7, 7, 512))])
def test_mobilenet_widths_change_the_grid_as_keras_builds_it(name, alpha,
                                                              grid):
  spec = extractors.extractor_spec(name, alpha=alpha)
  assert spec.grid == grid
  model = extractors.build_extractor(spec, "none")
  assert model.output_shape[1:] == grid


def test_a_width_that_the_network_has_not_fails_naming_the_key():
  with pytest.raises(ValueError, match="features.alpha 0.3 is not one of"):
    extractors.extractor_spec("mobilenet_v2", alpha=0.3)
  with pytest.raises(ValueError, match="features.alpha.*no width multiplier"):
    extractors.extractor_spec("inception_v3", alpha=0.5)


@pytest.mark.parametrize("application,kwargs", [
    ("MobileNetV2", {"alpha": 0.35}), ("MobileNet", {"alpha": 0.25})])
def test_mobilenet_v1_and_v2_files_load_and_preprocess_to_unit_range(
    tmp_path, application, kwargs):
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(7)
  network = getattr(keras.applications, application)(
      include_top=False, weights=None, input_shape=(224, 224, 3), **kwargs)
  # (Keras 3 writes only .weights.h5; Keras' own legacy `_tf_no_top.h5`
  # MobileNet files load through the same load_weights call.)
  path = str(tmp_path / "net.weights.h5")
  network.save_weights(path)
  name = "mobilenet_v2" if application == "MobileNetV2" else "mobilenet"
  model = extractors.build_extractor(
      extractors.extractor_spec(name, alpha=kwargs["alpha"]), path)
  images = np.random.default_rng(2).uniform(0, 255, (1, 224, 224, 3))
  # Their preprocess_input: [0, 255] -> [-1, 1]; inference mode (BN frozen).
  np.testing.assert_allclose(
      model(images.astype(np.float32), training=False).numpy(),
      network((images / 127.5 - 1).astype(np.float32),
              training=False).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("file_network,file_alpha,name,alpha", [
    ("MobileNetV2", 0.35, "mobilenet_v2", 1.0),     # another width
    ("MobileNetV2", 0.35, "mobilenet_v3_small", 1.0),  # another network
    ("MobileNet", 0.25, "mobilenet_v2", 0.35)])
def test_a_weights_file_of_another_network_fails_naming_features_weights(
    tmp_path, file_network, file_alpha, name, alpha):
  import keras  # pylint: disable=g-import-not-at-top
  network = getattr(keras.applications, file_network)(
      include_top=False, weights=None, input_shape=(224, 224, 3),
      alpha=file_alpha)
  path = str(tmp_path / "other.weights.h5")
  network.save_weights(path)
  with pytest.raises(extractors.WeightsMismatchError) as error:
    extractors.build_extractor(extractors.extractor_spec(name, alpha=alpha),
                               path)
  message = str(error.value)
  assert message.startswith(f"features.weights '{path}' does not fit "
                            f"extractor '{name}'")
  assert "keras.applications." in message and "arrays" in message
  assert len(message) < 1000  # not Keras' list of every layer


def _resized_as_before(image_bytes, size):
  """load_image as it was before the at-size shortcut: always resized."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image = tf.image.resize(image, (size, size), antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0).numpy()


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("RGB", "PNG"),
                                      ("L", "PNG"), ("RGBA", "PNG"),
                                      ("P", "GIF"), ("RGB", "BMP")])
def test_an_image_at_size_gives_the_resized_values_bit_for_bit(mode, fmt):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buffer, fmt)
  data = buffer.getvalue()
  traced = tf.function(lambda b: extractors.load_image(b, 24),
                       input_signature=[tf.TensorSpec([], tf.string)])
  expected = _resized_as_before(data, 24)
  assert np.array_equal(extractors.load_image(data, 24).numpy(), expected)
  assert np.array_equal(traced(data).numpy(), expected)
  assert traced.get_concrete_function().structured_outputs.shape == (
      24, 24, 3)
  # Other sizes still go through the resize.
  for size in (23, 25, 12):
    assert np.array_equal(extractors.load_image(data, size).numpy(),
                          _resized_as_before(data, size))
  # A non-square image with one side at size is resized too.
  Image.fromarray(pixels[:, :20]).save(buffer := io.BytesIO(), "PNG")
  assert np.array_equal(extractors.load_image(buffer.getvalue(), 24).numpy(),
                        _resized_as_before(buffer.getvalue(), 24))
