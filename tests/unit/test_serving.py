"""The serving SavedModel as TF Serving sees it: signatures, ops, REST, errors.

One tiny untrained captioner with the `patches` extractor is exported once and
loaded back; every test drives the loaded signatures, not the Python objects.
TF Serving itself is not run (no Docker engine here): the REST test decodes
the README's JSON body the way TF Serving's REST API does and drives the same
signature with it.
"""

import base64
import functools
import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import types
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from benchmarks import loop_ops
from core import config as config_lib
from core import text
from core import extractors
from core import features
from ingest import feature_cache
from tests.helpers import tiny_model
from trainer import export
from trainer import models
from trainer.models import transformer

IMAGE_SIZE, PATCH_SIZE = tiny_model.IMAGE_SIZE, tiny_model.PATCH_SIZE
WORDS, MAX_LENGTH = tiny_model.WORDS, tiny_model.MAX_LENGTH
NOT_AN_IMAGE = "is not a JPEG, PNG, GIF, BMP or WebP image"
# Ops that call back into Python: the stock model server cannot run them.
PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def _encode(image, fmt, **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _photo(width, height, seed=0):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  made = tiny_model.build_and_export(str(tmp_path_factory.mktemp("serving")))
  return types.SimpleNamespace(**vars(made),
                               model=tf.saved_model.load(made.path))


def _caption_images(served, images):
  out = served.model.signatures["serving_default"](
      image_bytes=tf.constant(images, tf.string))
  return [c.decode("utf-8") for c in out["caption"].numpy()]


def _grid(served, image_bytes):
  """The feature grid, computed outside the serving graph (as caching does)."""
  image = extractors.load_image(image_bytes, served.spec.image_size)
  return served.extractor(image[None], training=False).numpy()[0]


def _example(image_id, grid, dtype=np.float16):
  """A raw tf.Example as ImageCaptionExampleGen writes it."""
  return feature_cache.to_example(
      {"image_id": image_id, "file_name": f"{image_id}.jpg",
       "path": f"/data/{image_id}.jpg",
       "captions": ["a dog on the grass", "a red ball"]},
      grid, dtype).SerializeToString()


# (a) Every signature, and they agree.

def test_signatures_have_the_documented_inputs_and_outputs(served):
  signatures = served.model.signatures
  assert set(signatures) == {"serving_default", "from_examples",
                             "from_cached_features", "from_features",
                             "sample", "beam_search", "attention"}
  expected = {
      "serving_default": ("image_bytes", tf.string, [None]),
      "from_examples": ("examples", tf.string, [None]),
      "from_cached_features": ("image_features", tf.string, [None]),
      "from_features": ("image_features", tf.float32,
                        [None, *served.spec.grid]),
  }
  assert sorted(signatures["beam_search"].structured_input_signature[1]) == [
      "beam_width", "image_bytes", "length_penalty"]
  assert sorted(signatures["sample"].structured_input_signature[1]) == [
      "image_bytes", "seed", "temperature"]
  assert set(signatures["sample"].structured_outputs) == {"caption"}
  for name, (input_name, dtype, shape) in expected.items():
    inputs = signatures[name].structured_input_signature[1]
    assert list(inputs) == [input_name], name
    assert inputs[input_name].dtype == dtype, name
    assert inputs[input_name].shape.as_list() == shape, name
    assert set(signatures[name].structured_outputs) == {"caption"}, name
  assert set(signatures["beam_search"].structured_outputs) == {
      "caption", "log_prob"}
  assert set(signatures["attention"].structured_outputs) == {
      "caption", "tokens", "attention"}


def test_the_four_signatures_give_the_same_captions(served):
  images = [_encode(_photo(40, 30, seed=1), "JPEG"),
            _encode(_photo(64, 64, seed=2), "PNG"),
            _encode(_photo(33, 90, seed=3), "JPEG", quality=70)]
  from_bytes = _caption_images(served, images)
  grids = np.stack([_grid(served, b) for b in images])
  from_features = served.model.signatures["from_features"](
      image_features=tf.constant(grids))["caption"].numpy()
  examples = [_example(i, g) for i, g in enumerate(grids)]
  from_examples = served.model.signatures["from_examples"](
      examples=tf.constant(examples))["caption"].numpy()
  from_cached_features = served.model.signatures["from_cached_features"](
      image_features=tf.constant([
          tf.train.Example.FromString(e).features.feature[
              "image_features"].bytes_list.value[0] for e in examples])
  )["caption"].numpy()
  assert [c.decode() for c in from_features] == from_bytes
  assert [c.decode() for c in from_examples] == from_bytes
  assert [c.decode() for c in from_cached_features] == from_bytes
  for caption in from_bytes:
    words = caption.split()
    assert len(words) == MAX_LENGTH - 1, caption  # [END] was made rare
    assert set(words) <= set(WORDS)
  assert len(set(from_bytes)) > 1, "every image got the same caption"


# (b) Only ops the stock model server has.

def _graph_ops(graph_def):
  ops = {node.op for node in graph_def.node}
  for function in graph_def.library.function:
    ops |= {node.op for node in function.node_def}
  return ops


_CHECK_OPS = """
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the TF Text ops
from tensorflow.python.framework import op_def_registry
print(json.dumps(sorted(op for op in json.load(sys.stdin)
                        if op_def_registry.get(op) is None)))
"""


def test_the_serving_graph_uses_only_stock_tensorflow_and_tf_text_ops(served):
  per_signature = {
      name: _graph_ops(fn.graph.as_graph_def())
      for name, fn in served.model.signatures.items()}
  # Everything the model server loads: saved_model.pb, with the restore ops.
  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(served.path, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  all_ops = set().union(*per_signature.values(), *(
      _graph_ops(meta.graph_def) for meta in saved.meta_graphs))
  for name, ops in sorted(per_signature.items()):
    print(f"{name}: {len(ops)} op types: {' '.join(sorted(ops))}")
  print(f"saved_model.pb: {len(all_ops)} op types: "
        f"{' '.join(sorted(all_ops))}")
  assert not all_ops & PYTHON_OPS
  # A fresh interpreter with only TensorFlow and TF Text: nothing else this
  # test process imported (Keras, tfx_bsl, ...) can register an op.
  check = subprocess.run([sys.executable, "-c", _CHECK_OPS],
                         input=json.dumps(sorted(all_ops)), text=True,
                         capture_output=True, timeout=120, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert json.loads(check.stdout.strip().splitlines()[-1]) == []
  # The walk really saw the graph: decoding, the guard, the loops, lookup.
  assert {"DecodeImage", "ExtractJpegShape", "Assert", "ScaleAndTranslate",
          "ExtractImagePatches", "ParseExampleV2", "DecodeRaw",
          "LookupTableFindV2"} <= all_ops
  assert all_ops & {"While", "StatelessWhile"}
  for name, ops in per_signature.items():
    assert len(ops) > 10, name


# (c) TF Serving's REST API.

# The README's request body, as `curl -d` sends it.
README_BODY = ('{"signature_name": "serving_default", '
               '"instances": [{"b64": "%s"}]}')


def _tf_serving_rest_predict(model, body):
  """(HTTP status, JSON response) as TF Serving's REST predict API answers.

  Row format ("instances") or columnar ("inputs"); {"b64": ...} objects are
  base64 bytes; a single-input signature takes each instance as that input's
  value; a single-output signature answers a plain list of predictions;
  string outputs are UTF-8 text (base64 only for names ending in "_bytes").
  InvalidArgumentError -> 400 {"error": message}.
  """
  request = json.loads(body)
  signature = model.signatures[request.get("signature_name",
                                           "serving_default")]
  (input_name, spec), = signature.structured_input_signature[1].items()

  def decode(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
      return base64.b64decode(value["b64"])
    if isinstance(value, list):
      return [decode(v) for v in value]
    return value

  if "instances" in request:
    values = [decode(i[input_name] if isinstance(i, dict) and input_name in i
                     else i) for i in request["instances"]]
  else:
    inputs = request["inputs"]
    values = decode(inputs[input_name] if isinstance(inputs, dict)
                    and input_name in inputs else inputs)
  try:
    outputs = signature(**{input_name: tf.constant(values, spec.dtype)})
  except tf.errors.InvalidArgumentError as e:
    return 400, json.dumps({"error": e.message})

  def encode(name, value):
    if isinstance(value, bytes):
      return ({"b64": base64.b64encode(value).decode()}
              if name.endswith("_bytes") else value.decode("utf-8"))
    return value

  columns = {name: [encode(name, v) for v in t.numpy().tolist()]
             for name, t in outputs.items()}
  key = "predictions" if "instances" in request else "outputs"
  if len(columns) == 1:
    (rows,) = columns.values()
    return 200, json.dumps({key: rows})
  if key == "outputs":
    return 200, json.dumps({key: columns})
  return 200, json.dumps({key: [dict(zip(columns, row))
                                for row in zip(*columns.values())]})


def test_the_readme_rest_request_returns_a_list_of_captions(served):
  jpeg = _encode(_photo(48, 36, seed=4), "JPEG")
  body = README_BODY % base64.b64encode(jpeg).decode("ascii")
  status, response = _tf_serving_rest_predict(served.model, body)
  assert status == 200
  response = json.loads(response)
  assert list(response) == ["predictions"]
  assert response["predictions"] == _caption_images(served, [jpeg])
  assert isinstance(response["predictions"][0], str)
  # The gRPC API carries the same batch as a DT_STRING TensorProto.
  proto = tf.make_tensor_proto([jpeg], dtype=tf.string)
  grpc = served.model.signatures["serving_default"](
      image_bytes=tf.constant(tf.make_ndarray(proto)))["caption"].numpy()
  assert [c.decode() for c in grpc] == response["predictions"]


def test_a_rest_request_with_bad_bytes_gets_a_400_naming_them(served):
  good = base64.b64encode(_encode(_photo(20, 20), "PNG")).decode()
  bad = base64.b64encode(b"<html>not found</html>").decode()
  body = json.dumps({"instances": [{"b64": good}, {"b64": bad}]})
  status, response = _tf_serving_rest_predict(served.model, body)
  assert status == 400
  assert f"image_bytes[1] {NOT_AN_IMAGE}" in json.loads(response)["error"]


# (d) Bad requests.

@pytest.mark.parametrize("batch,message", [
    ([b"this is not an image"], f"image_bytes[0] {NOT_AN_IMAGE}"),
    ([None, b"GIF7 nearly"], f"image_bytes[1] {NOT_AN_IMAGE}"),
    ([None, None, b"II*\0 a TIFF header"], f"image_bytes[2] {NOT_AN_IMAGE}"),
    # JPEG XL: decode_image reads it, but its size header is bit-packed.
    ([None, b"\xff\x0a\xfa\x7f"], f"image_bytes[1] {NOT_AN_IMAGE}"),
    ([None, b""], "image_bytes[1] is empty"),
])
def test_bytes_that_are_not_an_image_are_refused_by_index(served, batch,
                                                          message):
  good = _encode(_photo(20, 20), "JPEG")
  batch = [good if b is None else b for b in batch]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=re.escape(message)):
    _caption_images(served, batch)


def test_a_corrupt_image_is_an_invalid_argument(served):
  truncated = _encode(_photo(40, 40), "PNG")[:60]
  with pytest.raises(tf.errors.InvalidArgumentError, match="PNG"):
    _caption_images(served, [truncated])


def test_animated_webp_is_refused_with_a_clear_message(served):
  frames = [_photo(20, 20, seed=s) for s in range(3)]
  webp = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                 duration=100)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"image_bytes\[0\] is an animated WebP"):
    _caption_images(served, [webp])


def test_an_empty_batch_gives_an_empty_result(served):
  signatures = served.model.signatures
  for name, empty in [
      ("serving_default", tf.zeros([0], tf.string)),
      ("from_examples", tf.zeros([0], tf.string)),
      ("from_cached_features", tf.zeros([0], tf.string)),
      ("from_features", tf.zeros([0, *served.spec.grid], tf.float32))]:
    caption = signatures[name](empty)["caption"]
    assert caption.shape == (0,), name
    assert caption.dtype == tf.string, name
  status, response = _tf_serving_rest_predict(
      served.model, '{"instances": []}')
  assert (status, json.loads(response)) == (200, {"predictions": []})


def test_a_batch_mixing_sizes_and_formats_gets_one_caption_each(served):
  photo = _photo(61, 23, seed=5)
  frames = [photo.convert("P"), _photo(61, 23, seed=6).convert("P")]
  batch = [
      _encode(photo, "JPEG"),
      _encode(photo.convert("L").resize((17, 50)), "JPEG"),      # grayscale
      _encode(photo.convert("RGBA").resize((64, 64)), "PNG"),    # alpha
      _encode(photo.convert("L"), "PNG"),                        # grayscale
      _encode(photo.convert("P"), "PNG"),                        # palette
      _encode(Image.fromarray(                                   # 16 bits
          np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50), "PNG"),
      _encode(photo.convert("CMYK"), "JPEG"),
      _encode(photo.resize((300, 200)), "JPEG", progressive=True),
      _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
      _encode(photo, "BMP"),
      _encode(photo, "WEBP"),
      _encode(photo, "WEBP", lossless=True),
  ]
  captions = _caption_images(served, batch)
  assert len(captions) == len(batch)
  # A batch captions each image as if it came alone.
  assert captions == [_caption_images(served, [b])[0] for b in batch]


def _png_bomb(side):
  """A valid 1-bit PNG of side x side pixels: ~50 KB for 20000 x 20000."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))
  row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed pixels
  compressor = zlib.compressobj(9)
  idat = b"".join(compressor.compress(row * 1000)
                  for _ in range(side // 1000)) + compressor.flush()
  return (b"\x89PNG\r\n\x1a\n"
          + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
          + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _patched(data, offset, packed):
  return data[:offset] + packed + data[offset + len(packed):]


@functools.lru_cache(maxsize=None)
def _bombs():
  """name -> (bytes, declared "WxH"): headers of > 50M pixels, no pixels."""
  small = _photo(16, 16)
  jpeg = _encode(small, "JPEG")
  sof = jpeg.index(b"\xff\xc0")
  lossless = _encode(small, "WEBP", lossless=True)
  bits = struct.unpack("<I", lossless[21:25])[0] & ~(2**28 - 1)
  extended = _encode(small, "WEBP", exif=b"Exif\0\0II*\0")
  assert extended[12:16] == b"VP8X"
  return {
      "png": (_png_bomb(20000), "20000x20000"),
      "jpeg": (_patched(jpeg, sof + 5, struct.pack(">HH", 20000, 30000)),
               "30000x20000"),
      "gif": (_patched(_encode(small.convert("P"), "GIF"), 6,
                       struct.pack("<HH", 65535, 65535)), "65535x65535"),
      "bmp": (_patched(_encode(small, "BMP"), 18,
                       struct.pack("<ii", 20000, -20000)), "20000x20000"),
      "webp_lossy": (_patched(_encode(small, "WEBP"), 26,
                              struct.pack("<HH", 16383, 16383)),
                     "16383x16383"),
      "webp_lossless": (_patched(lossless, 21, struct.pack(
          "<I", bits | 16383 | 16383 << 14)), "16384x16384"),
      "webp_extended": (_patched(extended, 24, (19999).to_bytes(3, "little")
                                 + (19999).to_bytes(3, "little")),
                        "20000x20000"),
  }


@pytest.mark.parametrize("name", [
    "png", "jpeg", "gif", "bmp", "webp_lossy", "webp_lossless",
    "webp_extended"])
def test_a_decompression_bomb_is_refused_before_decoding(served, name):
  bomb, declared = _bombs()[name]
  good = _encode(_photo(20, 20), "PNG")
  start = time.monotonic()
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _caption_images(served, [good, bomb])
  elapsed = time.monotonic() - start
  message = error.value.message
  assert f"image_bytes[1] declares {declared} pixels" in message
  assert f"max_pixels={features.MAX_PIXELS}" in message
  assert elapsed < 5, f"{elapsed:.1f} s: was it decoded?"


def test_an_animated_gif_counts_the_pixels_of_every_frame(served):
  # 5000 x 5000 x 3 frames = 75M pixels, over the 50M limit.
  frames = [_photo(16, 16, seed=s).convert("P") for s in range(3)]
  gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                duration=100)
  bomb = _patched(gif, 6, struct.pack("<HH", 5000, 5000))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"declares 5000x5000 pixels in 3 frame\(s\)"):
    _caption_images(served, [bomb])


def test_the_header_size_matches_what_pillow_reads():
  photo = _photo(53, 37, seed=7)
  images = {
      "jpeg": _encode(photo, "JPEG"),
      "jpeg progressive": _encode(photo, "JPEG", progressive=True),
      "png rgba": _encode(photo.convert("RGBA"), "PNG"),
      "gif": _encode(photo.convert("P"), "GIF"),
      "bmp": _encode(photo, "BMP"),
      "bmp top-down": _patched(_encode(photo, "BMP"), 22,
                               struct.pack("<i", -37)),
      "webp lossy": _encode(photo, "WEBP"),
      "webp lossless": _encode(photo, "WEBP", lossless=True),
      "webp extended": _encode(photo, "WEBP", exif=b"Exif\0\0II*\0"),
      "png bomb": _png_bomb(20000),
  }
  for name, data in images.items():
    expected = (20000, 20000) if "bomb" in name else (53, 37)
    size = export.image_header_size(tf.constant(data)).numpy().tolist()
    assert size == [*expected, 1], name
  assert export.image_format(tf.constant(b"nonsense")).numpy() == -1


def test_export_refuses_an_extractor_whose_grid_the_captioner_does_not_take(
    tmp_path):
  spec = extractors.extractor_spec("patches", 32, 16)
  captioner = transformer.Captioner(8, (4, 4, 768), num_layers=1, units=8)
  with pytest.raises(ValueError, match="extractor outputs grids"):
    export.export(str(tmp_path), captioner,
                  extractors.build_extractor(spec, "none", 16), 32,
                  str(tmp_path / "vocab.txt"), 8)


def test_beam_search_and_attention_signatures(served):
  images = [_encode(_photo(40, 30, seed=s), "JPEG") for s in range(4)]
  signatures = served.model.signatures
  greedy = _caption_images(served, images)
  beam = signatures["beam_search"](image_bytes=tf.constant(images),
                                   beam_width=tf.constant(3),
                                   length_penalty=tf.constant(0.0))
  one = signatures["beam_search"](image_bytes=tf.constant(images),
                                  beam_width=tf.constant(1),
                                  length_penalty=tf.constant(0.0))
  assert [c.decode() for c in one["caption"].numpy()] == greedy
  assert beam["caption"].shape == (4,) and beam["log_prob"].shape == (4,)
  assert np.all(beam["log_prob"].numpy() < 0)
  out = signatures["attention"](image_bytes=tf.constant(images))
  assert [c.decode() for c in out["caption"].numpy()] == greedy
  h, w, _ = served.spec.grid
  attention, tokens = out["attention"].numpy(), out["tokens"].numpy()
  assert attention.shape[0] == 4 and attention.shape[2:] == (h, w)
  for caption, words, maps in zip(greedy, tokens, attention):
    n = len(caption.split())
    assert [t.decode() for t in words[:n]] == caption.split()
    np.testing.assert_allclose(maps[:n].sum(axis=(1, 2)), 1.0, atol=1e-5)
  empty = signatures["beam_search"](image_bytes=tf.zeros([0], tf.string),
                                    beam_width=tf.constant(2),
                                    length_penalty=tf.constant(0.6))
  assert empty["caption"].shape == (0,)


def _sample(served, images, temperature, seed):
  out = served.model.signatures["sample"](
      image_bytes=tf.constant(images), temperature=tf.constant(temperature),
      seed=tf.constant(seed))
  return [c.decode() for c in out["caption"].numpy()]


def test_the_sample_signature_draws_seeded_captions(served):
  images = [_encode(_photo(40, 30, seed=s), "JPEG") for s in range(6)]
  greedy = _caption_images(served, images)
  assert _sample(served, images, 0.0, 123) == greedy  # temperature 0: greedy
  hot = _sample(served, images, 1.5, 7)
  assert _sample(served, images, 1.5, 7) == hot        # same seed, same text
  assert hot != greedy
  assert _sample(served, images, 1.5, 8) != hot        # another seed
  vocabulary = set(WORDS)
  assert all(set(c.split()) <= vocabulary for c in hot)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="temperature must be at least 0"):
    _sample(served, images, -1.0, 0)
  empty = served.model.signatures["sample"](
      image_bytes=tf.zeros([0], tf.string), temperature=tf.constant(1.0),
      seed=tf.constant(0))
  assert empty["caption"].shape == (0,)


def test_the_caption_command_with_beam_search_and_attention_png(
    served, tmp_path, capsys):
  from captioner import cli  # pylint: disable=g-import-not-at-top
  from serving import client  # pylint: disable=g-import-not-at-top
  path = tmp_path / "photo.jpg"
  path.write_bytes(_encode(_photo(50, 40, seed=7), "JPEG"))
  png = tmp_path / "attention.png"
  assert cli.main(["caption", "--model", served.path, str(path), "--beam",
                   "3", "--attention-png", str(png)]) == 0
  printed = capsys.readouterr().out
  assert f"{path}: " in printed and str(png) in printed
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  greedy, = _caption_images(served, [path.read_bytes()])
  assert client.caption_files(served.path, [str(path)], beam=1) == [greedy]


def test_the_caption_command_samples_at_a_temperature(served, tmp_path,
                                                      capsys):
  from captioner import cli  # pylint: disable=g-import-not-at-top
  paths = []
  for s in range(3):
    paths.append(tmp_path / f"photo{s}.jpg")
    paths[-1].write_bytes(_encode(_photo(50, 40, seed=20 + s), "JPEG"))
  args = ["caption", "--model", served.path, *map(str, paths),
          "--temperature", "1.5", "--seed", "4"]
  assert cli.main(args) == 0
  printed = capsys.readouterr().out.splitlines()
  expected = _sample(served, [p.read_bytes() for p in paths], 1.5, 4)
  assert printed == [f"{p}: {c}" for p, c in zip(paths, expected)]
  with pytest.raises(SystemExit, match="--beam or --temperature"):
    cli.main(["caption", "--model", served.path, str(paths[0]), "--beam",
              "2", "--temperature", "0.5"])


def test_the_exported_weights_read_back_into_a_fresh_keras_model(served):
  vocab_size = len(text.RESERVED_TOKENS) + len(WORDS)
  tf.keras.utils.set_random_seed(99)  # not the exported model's weights
  fresh = transformer.Captioner(vocab_size, served.spec.grid, num_layers=1,
                                units=16, num_heads=2, dropout_rate=0.0,
                                max_length=MAX_LENGTH)
  grids = np.stack([_grid(served, _encode(_photo(40, 30, seed=s), "JPEG"))
                    for s in range(4)]).astype(np.float16).astype(np.float32)
  fresh((grids[:1], np.full((1, 1), text.START_ID, np.int64)))
  served_captions = served.model.signatures["from_features"](
      image_features=tf.constant(grids))["caption"].numpy().tolist()

  def captions(model):
    ids = model.greedy_decode(tf.constant(grids), MAX_LENGTH).numpy()
    vocabulary = text.RESERVED_TOKENS + WORDS
    return [text.ids_to_caption(row, vocabulary).encode() for row in ids]

  assert captions(fresh) != served_captions
  export.restore_keras_weights(served.path, fresh, served.extractor)
  assert captions(fresh) == served_captions
  bigger = transformer.Captioner(vocab_size, served.spec.grid, num_layers=2,
                                 units=16, num_heads=2, max_length=MAX_LENGTH)
  bigger((grids[:1], np.full((1, 1), text.START_ID, np.int64)))
  with pytest.raises(ValueError, match="captioner_weights"):
    export.restore_keras_weights(served.path, bigger)


@pytest.mark.parametrize("architecture", ["show_attend_tell",
                                          "patch_transformer"])
def test_models_b_and_c_export_every_signature(served, tmp_path,
                                               architecture):
  vocab_size = len(text.RESERVED_TOKENS) + len(WORDS)
  cfg = config_lib.ModelConfig(
      architecture=architecture, num_layers=1, units=16, num_heads=2,
      dropout=0.0, max_length=MAX_LENGTH, rnn_units=24, encoder_layers=1)
  counts = np.ones(vocab_size)
  counts[text.END_ID] = 1e-3

  def build(seed):
    tf.keras.utils.set_random_seed(seed)
    captioner = models.build_captioner(cfg, vocab_size, served.spec.grid,
                                       label_counts=counts)
    captioner((np.zeros((1, *served.spec.grid), np.float32),
               np.full((1, 1), text.START_ID, np.int64)))
    return captioner

  vocab_path = tmp_path / "vocab.txt"
  vocab_path.write_text("\n".join(text.RESERVED_TOKENS + WORDS) + "\n")
  path = str(tmp_path / "1")
  exported = build(0)
  export.export(path, exported, served.extractor, served.spec.image_size,
                str(vocab_path), MAX_LENGTH)
  model = tf.saved_model.load(path)
  assert set(model.signatures) == {"serving_default", "from_examples",
                                   "from_cached_features", "from_features",
                                   "sample", "beam_search", "attention"}
  images = tf.constant([_encode(_photo(40, 30, seed=s), "JPEG")
                        for s in range(3)])
  greedy = model.signatures["serving_default"](image_bytes=images)["caption"]
  greedy = greedy.numpy().tolist()
  assert any(greedy)
  sampled = model.signatures["sample"](
      image_bytes=images, temperature=tf.constant(0.0), seed=tf.constant(1))
  beam = model.signatures["beam_search"](
      image_bytes=images, beam_width=tf.constant(1),
      length_penalty=tf.constant(0.0))
  assert sampled["caption"].numpy().tolist() == greedy
  assert beam["caption"].numpy().tolist() == greedy
  out = model.signatures["attention"](image_bytes=images)
  assert out["caption"].numpy().tolist() == greedy
  h, w, _ = served.spec.grid
  assert out["attention"].shape[2:] == (h, w)
  for caption, maps in zip(greedy, out["attention"].numpy()):
    n = len(caption.split())
    np.testing.assert_allclose(maps[:n].sum(axis=(1, 2)), 1.0, atol=1e-5)
  fresh = build(5)

  def same_weights():
    return all(np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(fresh.weights, exported.weights))

  assert not same_weights()
  export.restore_keras_weights(path, fresh)
  assert same_weights()
  grids = tf.constant(np.stack([_grid(served, b) for b in images.numpy()])
                      .astype(np.float16).astype(np.float32))
  ids = fresh.greedy_decode(grids, MAX_LENGTH).numpy()
  assert [text.ids_to_caption(row, text.RESERVED_TOKENS + WORDS).encode()
          for row in ids] == greedy
  # The same from the export alone: its grid and vocabulary are read back.
  restored = export.restore_captioner(path, cfg)
  assert restored.grid == list(served.spec.grid)
  assert restored.vocabulary == list(text.RESERVED_TOKENS + WORDS)
  assert restored.extractor is None
  ids = restored.captioner.greedy_decode(grids, MAX_LENGTH).numpy()
  assert [text.ids_to_caption(row, restored.vocabulary).encode()
          for row in ids] == greedy


def test_the_caption_command_takes_a_serving_folder(served, tmp_path):
  from captioner import cli  # pylint: disable=g-import-not-at-top
  from serving import client  # pylint: disable=g-import-not-at-top
  path = tmp_path / "photo.jpg"
  path.write_bytes(_encode(_photo(50, 40, seed=9), "JPEG"))
  serving_dir = os.path.dirname(served.path)  # holds version "1"
  assert client.caption_files(serving_dir, [str(path)]) == _caption_images(
      served, [path.read_bytes()])
  with pytest.raises(SystemExit, match=r"--model .*no saved_model\.pb"):
    cli.main(["caption", "--model", str(tmp_path), str(path)])


def test_the_caption_command_captions_many_files_in_batches(served, tmp_path,
                                                           capsys):
  """Files are captioned `--batch-size` at a time (one call of a thousand
  photos once took 16 GB), in order, each the caption of the whole batch."""
  from captioner import cli  # pylint: disable=g-import-not-at-top
  paths = []
  for i in range(5):
    paths.append(tmp_path / f"photo{i}.jpg")
    paths[-1].write_bytes(_encode(_photo(40 + 7 * i, 50, seed=i), "JPEG"))
  want = _caption_images(served, [p.read_bytes() for p in paths])
  assert cli.main(["caption", "--model", served.path, "--batch-size", "2",
                   *map(str, paths)]) == 0
  assert capsys.readouterr().out.splitlines() == [
      f"{p}: {c}" for p, c in zip(paths, want)]
  with pytest.raises(SystemExit, match="--batch-size must be at least 1"):
    cli.main(["caption", "--model", served.path, "--batch-size", "0",
              str(paths[0])])


def test_a_float32_cache_is_served_unrounded_and_scored_with_beam_search(
    served, tmp_path):
  """features.dtype float32 + evaluation.beam_width 3: from_examples (what
  the Evaluator scores) reads float32 bytes and decodes as beam_search does;
  serving_default keeps greedy and rounds nothing."""
  path = str(tmp_path / "float32-beam")
  export.export(path, served.captioner, served.extractor,
                served.spec.image_size, served.vocab_path, MAX_LENGTH,
                feature_dtype="float32", eval_beam_width=3)
  model = tf.saved_model.load(path)
  images = [_encode(_photo(40, 30, seed=s), "JPEG") for s in range(4)]
  grids = np.stack([_grid(served, b) for b in images])
  examples = tf.constant([_example(i, g, np.float32)
                          for i, g in enumerate(grids)])
  scored = model.signatures["from_examples"](examples=examples)["caption"]
  beam = model.signatures["beam_search"](
      image_bytes=tf.constant(images), beam_width=tf.constant(3),
      length_penalty=tf.constant(0.0))["caption"]
  assert scored.numpy().tolist() == beam.numpy().tolist()
  greedy = model.signatures["serving_default"](
      image_bytes=tf.constant(images))["caption"].numpy().tolist()
  unrounded = model.signatures["from_features"](
      image_features=tf.constant(grids))["caption"].numpy().tolist()
  assert greedy == unrounded
  # serving.beam_width: serving_default and from_features return beam
  # search's captions, from_examples what evaluation.beam_width says.
  path = str(tmp_path / "serving-beam")
  export.export(path, served.captioner, served.extractor,
                served.spec.image_size, served.vocab_path, MAX_LENGTH,
                feature_dtype="float32", serving_beam_width=3)
  serving_beam = tf.saved_model.load(path).signatures
  assert serving_beam["serving_default"](image_bytes=tf.constant(images))[
      "caption"].numpy().tolist() == beam.numpy().tolist()
  assert serving_beam["from_features"](image_features=tf.constant(grids))[
      "caption"].numpy().tolist() == beam.numpy().tolist()
  assert serving_beam["from_examples"](examples=examples)[
      "caption"].numpy().tolist() == greedy
  # The float16 model's from_examples cannot read these float32 bytes.
  with pytest.raises(tf.errors.InvalidArgumentError):
    served.model.signatures["from_examples"](examples=examples)
  with pytest.raises(ValueError, match="features.dtype 'bfloat16'"):
    export.export(str(tmp_path / "bad"), served.captioner, served.extractor,
                  served.spec.image_size, served.vocab_path, MAX_LENGTH,
                  feature_dtype="bfloat16")


def test_the_decoding_loops_read_no_variable_at_each_step(served):
  # The decoders read every weight once, before their loop
  # (TransformerDecoderCaptioner.decoding_step): a loop body that read one
  # would read it again at every step.
  bodies = loop_ops.loop_bodies(served.path)
  assert len(bodies) >= 3, sorted(bodies)  # greedy, beam search, sampling
  for name, ops in bodies.items():
    assert ops["ReadVariableOp"] == 0, (name, ops)
    assert ops["BatchMatMulV2"] > 0, (name, ops)  # it is a decoding step
