"""The feature-caching Beam job on a dataset holding every kind of bad input,
run by `captioner cache-features` under the multi-processing DirectRunner."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from core import extractors
from tests.helpers import bad_inputs

CAPTIONER = os.path.join(os.path.dirname(sys.executable), "captioner")


def _cache(data_dir, out_dir, *extra, extractor="inception_v3"):
  command = [CAPTIONER, "cache-features", "--dataset", "coco-format",
             "--annotations", os.path.join(data_dir, "annotations.json"),
             "--images", os.path.join(data_dir, "images"),
             "--split-names", "all", "--extractor", extractor,
             "--weights", "none", "--out", out_dir, "--batch-size", "4",
             "--max-pixels", str(bad_inputs.MAX_PIXELS), *extra]
  run = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stdout + run.stderr
  return run.stdout


def _stored(out_dir, split="all"):
  examples = {}
  for path in sorted(glob.glob(os.path.join(out_dir, split, "*.gz"))):
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
      example = tf.train.Example.FromString(record.numpy())
      image_id = example.features.feature["image_id"].int64_list.value[0]
      assert image_id not in examples, f"image {image_id} stored twice"
      examples[image_id] = example
  return examples


def _dead_letters(out_dir):
  letters = []
  for path in glob.glob(os.path.join(out_dir, "dead_letters", "*.jsonl")):
    with open(path) as f:
      letters += [json.loads(line) for line in f]
  return letters


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("data"))
  expected = bad_inputs.write(data_dir)
  out_dir = str(tmp_path_factory.mktemp("cache"))
  stdout = _cache(data_dir, out_dir, "--direct_num_workers=2")
  return data_dir, out_dir, expected, stdout


def test_every_good_image_once_and_every_bad_one_with_its_reason(cached):
  _, out_dir, expected, stdout = cached
  threads = max(1, (os.cpu_count() or 1) // 2)
  assert (f"2 worker processes, {threads} TensorFlow thread(s) for each op"
          in stdout)
  assert sorted(_stored(out_dir)) == sorted(expected["processed"])
  letters = _dead_letters(out_dir)
  skipped = {d["image_id"]: d["reason"] for d in letters
             if "caption_index" not in d}
  assert skipped == expected["skipped"]
  for letter in letters:
    assert letter["path"] and letter["reason"]
  dropped = {}
  for letter in letters:
    if "caption_index" in letter:
      dropped[letter["reason"]] = dropped.get(letter["reason"], 0) + 1
  assert dropped == expected["dropped_captions"]

  # The printed counts and the summary add up to the annotation file.
  with open(os.path.join(out_dir, "summary.json")) as f:
    summary = json.load(f)["splits"]["all"]
  assert summary["processed"] == len(expected["processed"])
  assert summary["processed"] + sum(summary["skipped"].values()) == (
      expected["listed"])
  assert summary["dropped_captions"] == expected["dropped_captions"]
  line = (f"[all] {summary['processed']} images processed, "
          f"{len(expected['skipped'])} skipped")
  assert line in stdout
  assert "2 missing_file" not in stdout and "1 missing_file" in stdout


def test_stored_features_equal_the_extractor_on_the_image(cached):
  data_dir, out_dir, expected, _ = cached
  spec = extractors.extractor_spec("inception_v3")
  model = extractors.build_extractor(
      spec, os.path.join(out_dir, "extractor", "extractor.weights.h5"))
  stored = _stored(out_dir)
  # Plain JPEG, PNG named .jpg, grayscale, CMYK, RGBA, 16-bit PNG.
  for image_id in sorted(expected["processed"])[:12]:
    name = expected["processed"][image_id]
    with open(os.path.join(data_dir, "images", name), "rb") as f:
      image = extractors.load_image(f.read(), spec.image_size)
    direct = model(image[tf.newaxis], training=False).numpy()[0]
    feature = stored[image_id].features.feature
    assert list(feature["image_features_shape"].int64_list.value) == [8, 8,
                                                                      2048]
    grid = np.frombuffer(feature["image_features"].bytes_list.value[0],
                         np.float16).reshape(8, 8, 2048)
    # float16 keeps 11 significant bits: a relative error of at most 2^-11,
    # plus the subnormal step near zero.
    np.testing.assert_allclose(grid.astype(np.float32), direct,
                               rtol=2**-10, atol=1e-7)
    assert [c.decode() for c in feature["captions"].bytes_list.value]


def test_a_rerun_over_the_completed_output_does_nothing(cached):
  data_dir, out_dir, _, _ = cached
  before = {p: os.stat(p).st_mtime_ns
            for p in glob.glob(os.path.join(out_dir, "**"), recursive=True)}
  stdout = _cache(data_dir, out_dir)
  assert "already holds this cache" in stdout
  after = {p: os.stat(p).st_mtime_ns
           for p in glob.glob(os.path.join(out_dir, "**"), recursive=True)}
  assert after == before


def test_shards_are_deterministic_across_runners_and_batches(cached, tmp_path):
  data_dir = cached[0]
  multi = str(tmp_path / "multi")
  single = str(tmp_path / "single")
  _cache(data_dir, multi, "--direct_num_workers=2", extractor="patches")
  _cache(data_dir, single, "--direct_running_mode=in_memory",
         "--direct_num_workers=1", "--batch-size", "16", extractor="patches")
  shards = sorted(os.listdir(os.path.join(multi, "all")))
  assert shards == sorted(os.listdir(os.path.join(single, "all")))
  for shard in shards:
    with open(os.path.join(multi, "all", shard), "rb") as a, open(
        os.path.join(single, "all", shard), "rb") as b:
      assert a.read() == b.read(), shard


def test_gs_inputs_are_read_through_a_gcs_emulator(cached, emulator, bucket,
                                                   tmp_path):
  data_dir, _, expected, _ = cached
  for root, _, names in os.walk(data_dir):
    for name in names:
      path = os.path.join(root, name)
      bucket.blob("data/" + os.path.relpath(path, data_dir)).upload_from_filename(
          path)
  out_dir = str(tmp_path / "from_gcs")
  env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator)
  run = subprocess.run(
      [CAPTIONER, "cache-features", "--dataset", "coco-format",
       "--annotations", f"gs://{bucket.name}/data/annotations.json",
       "--images", f"gs://{bucket.name}/data/images", "--split-names", "all",
       "--extractor", "patches", "--weights", "none", "--out", out_dir,
       "--max-pixels", str(bad_inputs.MAX_PIXELS),
       "--direct_running_mode=in_memory"],
      env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout + run.stderr
  # Beam's warnings that say nothing to act on stay off the console.
  for harmless in ("direct_num_workers is not equal to 1",
                   "Using yield and return", "Resource module"):
    assert harmless not in run.stderr, run.stderr
  assert sorted(_stored(out_dir)) == sorted(expected["processed"])
  skipped = {d["image_id"]: d["reason"] for d in _dead_letters(out_dir)
             if "caption_index" not in d}
  assert skipped == expected["skipped"]
  assert all(d["path"].startswith("gs://") for d in _dead_letters(out_dir))


def test_flickr8k_layout_caches_every_split_it_lists(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = tmp_path / "Flicker8k_Dataset"
  text = tmp_path / "Flickr8k_text"
  images.mkdir()
  text.mkdir()
  names = [f"{1000 + i}_abc.jpg" for i in range(5)]
  for i, name in enumerate(names):
    Image.new("RGB", (40, 30), (40 * i, 0, 0)).save(images / name)
  (text / "Flickr8k.token.txt").write_text("".join(
      f"{name}#{k}\tA red picture number {i} .\n"
      for i, name in enumerate(names) for k in range(2)))
  (text / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:3]))
  (text / "Flickr_8k.devImages.txt").write_text("\n".join(names[3:]))
  out_dir = str(tmp_path / "out")
  run = subprocess.run(
      [CAPTIONER, "cache-features", "--dataset", "flickr8k", "--annotations",
       str(text / "Flickr8k.token.txt"), "--images", str(images),
       "--extractor", "patches", "--weights", "none", "--out", out_dir,
       "--direct_running_mode=in_memory", "--direct_num_workers=2"],
      capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout + run.stderr
  # Set before TensorFlow starts (it refuses afterwards: no line then).
  threads = max(1, (os.cpu_count() or 1) // 2)
  assert (f"2 bundles at once in this process, {threads} TensorFlow "
          "thread(s) for each op") in run.stdout
  assert "[train] 3 images processed, 0 skipped" in run.stdout
  assert "[dev] 2 images processed, 0 skipped" in run.stdout
  stored = _stored(out_dir, "dev")
  assert len(stored) == 2
  for example in stored.values():
    file_name = example.features.feature["file_name"].bytes_list.value[0]
    assert file_name.decode() in names[3:]


def test_dataflow_gets_the_setup_file_and_direct_runner_every_core():
  import argparse  # pylint: disable=g-import-not-at-top
  from captioner import cache_features  # pylint: disable=g-import-not-at-top
  from core import config  # pylint: disable=g-import-not-at-top
  dataflow = argparse.Namespace(runner="DataflowRunner")
  options = cache_features.beam_args(dataflow, ["--project=p"])
  assert options[:2] == ["--runner=DataflowRunner", "--project=p"]
  assert f"--setup_file={config.REPO_ROOT}/setup.py" in options
  image = cache_features.beam_args(dataflow, ["--sdk_container_image=i"])
  assert not any(o.startswith("--setup_file") for o in image)
  for runner in ("FnApiRunner", "DirectRunner"):
    local = cache_features.beam_args(argparse.Namespace(runner=runner), [])
    assert "--direct_running_mode=multi_processing" in local
    assert f"--direct_num_workers={os.cpu_count()}" in local
  threads = cache_features.beam_args(
      argparse.Namespace(runner="FnApiRunner"),
      ["--direct_running_mode=in_memory"])
  assert f"--direct_num_workers={os.cpu_count()}" in threads


def test_network_calls_at_once_share_the_cores_tensorflow_threads(
    monkeypatch):
  """W workers make W network calls at once (in_memory: W bundles in this
  process; multi_processing: W processes): each op gets cores / W
  TensorFlow threads; one worker or Dataflow keep TensorFlow's default."""
  from captioner import cache_features  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(os, "cpu_count", lambda: 8)
  threads = cache_features.tensorflow_threads
  in_memory = "--direct_running_mode=in_memory"
  assert threads("FnApiRunner", [in_memory, "--direct_num_workers=2"]) == (
      2, 4)
  assert threads("DirectRunner", [in_memory, "--direct_num_workers=8"]) == (
      8, 1)
  assert threads("FnApiRunner", [in_memory, "--direct_num_workers=16"]) == (
      16, 1)
  assert threads("FnApiRunner", [in_memory, "--direct_num_workers=0"]) == (
      8, 1)
  assert threads("FnApiRunner", ["--direct_running_mode=multi_processing",
                                 "--direct_num_workers=4"]) == (4, 2)
  for options in ([in_memory, "--direct_num_workers=1"], [in_memory]):
    assert threads("FnApiRunner", options) == (0, 0), options
  assert threads("DataflowRunner", [in_memory,
                                    "--direct_num_workers=2"]) == (0, 0)


def test_the_shards_hold_every_processed_example_and_a_loss_is_an_error(
    cached):
  _, out_dir, expected, _ = cached
  with open(os.path.join(out_dir, "summary.json")) as f:
    summary = json.load(f)["splits"]
  assert summary["all"]["written"] == summary["all"]["processed"] == len(
      expected["processed"])
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  feature_cache.check_complete(summary)
  summary["all"]["written"] -= 3
  with pytest.raises(feature_cache.IncompleteCacheError,
                     match=r"all split: \d+ images processed but \d+ written"):
    feature_cache.check_complete(summary)


def test_the_decode_gives_load_images_values_and_errors(tmp_path):
  """uint8 at the network's size (its graph casts them), float32 resized
  otherwise: extractors.load_image's values either way, and its errors."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  for i, (size, fmt) in enumerate([((40, 30), "JPEG"), ((32, 32), "JPEG"),
                                   ((32, 32), "PNG"), ((50, 50), "PNG")]):
    path = tmp_path / f"{i}.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3),
                                 dtype=np.uint8)).save(path, fmt)
    record = {"image_id": i, "path": str(path)}
    _, image, problem = feature_cache.check_image(record, 10**6, 32)
    assert problem is None
    assert image.dtype == (np.uint8 if size == (32, 32) else np.float32)
    assert np.array_equal(
        image.astype(np.float32),
        extractors.load_image(path.read_bytes(), 32).numpy())
  truncated = tmp_path / "truncated.jpg"
  truncated.write_bytes((tmp_path / "0.jpeg").read_bytes()[:300])
  _, _, problem = feature_cache.check_image(
      {"image_id": 9, "path": str(truncated)}, 10**6, 32)
  with pytest.raises(tf.errors.InvalidArgumentError) as eager:
    extractors.load_image(truncated.read_bytes(), 32)
  assert problem == (feature_cache.UNDECODABLE,
                     str(eager.value).strip().splitlines()[-1])


def test_crc32_combine_equals_the_crc_of_the_concatenation():
  import zlib  # pylint: disable=g-import-not-at-top
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  for length in [0, 1, 7] + [int(n) for n in rng.integers(0, 300_000, 20)]:
    a = rng.bytes(int(rng.integers(0, 3000)))
    b = rng.bytes(length)
    for _ in range(2):  # the second with the length's cached operator
      assert feature_cache.crc32_combine(
          zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_shards_joined_from_deflated_records_read_back_everywhere(tmp_path):
  """WriteShards in a Beam job: every shard written (also those no example
  went to), each a GZIP file that TensorFlow, Python's gzip and Beam read
  back as the examples in image id order."""
  import gzip  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.io.tfrecordio import _TFRecordUtil  # pylint: disable=g-import-not-at-top
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  from ingest import local_beam  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  # Grids that deflate a little and some that do not at all, and an empty one.
  payloads = {i: (rng.integers(0, 4, 40_000, dtype=np.uint8).tobytes()
                  if i % 2 else rng.bytes(int(rng.integers(0, 70_000))))
              for i in (3, 11, 12, 40, 41, 97)}
  shards = 9   # more shards than examples: some stay empty
  out = str(tmp_path / "shards")
  with beam.Pipeline(runner=local_beam.LOCAL_RUNNER) as pipeline:
    _ = (pipeline | beam.Create(sorted(payloads.items()))
         | beam.MapTuple(lambda i, p: (i, feature_cache.deflate_record(p)))
         | feature_cache.WriteShards(out, shards)  # pylint: disable=no-value-for-parameter
         | beam.MapTuple(lambda path, n: json.dumps([path, n]))
         | beam.io.WriteToText(str(tmp_path / "written"),
                               shard_name_template=""))
  with open(tmp_path / "written") as f:
    written = dict(json.loads(line) for line in f)
  paths = sorted(glob.glob(os.path.join(out, "*.gz")))
  assert sorted(written) == paths and len(paths) == shards
  found = {}
  for shard, path in enumerate(paths):
    ids = sorted(i for i in payloads
                 if feature_cache.shard_of(i, shards) == shard)
    assert written[path] == len(ids)
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        path, compression_type="GZIP")]
    assert records == [payloads[i] for i in ids], path
    framed = io.BytesIO()
    for i in ids:
      _TFRecordUtil.write_record(framed, payloads[i])
    with gzip.open(path) as f:
      assert f.read() == framed.getvalue(), path
    found.update(dict(zip(ids, records)))
  assert found == payloads
  with beam.Pipeline(runner=local_beam.LOCAL_RUNNER) as pipeline:
    _ = (pipeline
         | beam.io.ReadFromTFRecord(os.path.join(out, "*.gz"))
         | beam.combiners.Count.Globally()
         | beam.io.WriteToText(str(tmp_path / "count"),
                               shard_name_template=""))
  assert (tmp_path / "count").read_text().strip() == str(len(payloads))


def test_a_job_in_the_preparing_process_uses_the_prepared_network(
    tmp_path, monkeypatch):
  """In-memory workers take the network prepared_extractor built, inside its
  block only; it computes what the network rebuilt from the saved weights
  does, which is what a worker in another process uses."""
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top

  def no_build(_):
    raise AssertionError("built again")
  with feature_cache.prepared_extractor(
      {"extractor": "mobilenet_v2", "alpha": 0.35, "weights": "none",
       "batch_size": 2, "patch_image_size": 128, "patch_size": 16,
       "max_pixels": 10**6, "feature_dtype": "float16"}, str(tmp_path)
  ) as settings:
    handler = feature_cache.ExtractorModelHandler(settings)
    monkeypatch.setattr(feature_cache.ExtractorSettings, "build", no_build)
    prepared = handler.load_model()
    monkeypatch.undo()
  rebuilt = handler.load_model()
  assert rebuilt is not prepared
  images = np.random.default_rng(4).uniform(
      0, 255, (2, 224, 224, 3)).astype(np.float32)
  grids = prepared(images).numpy()
  assert np.array_equal(grids, rebuilt(images).numpy())
  # A batch of uint8 images (photos already at the network's size) is cast
  # in the graph: the grids of the same values in float32.
  pixels = np.random.default_rng(5).integers(0, 256, (2, 224, 224, 3),
                                             dtype=np.uint8)
  assert np.array_equal(prepared(pixels).numpy(),
                        prepared(pixels.astype(np.float32)).numpy())
  with pytest.raises(TypeError, match="float32 or uint8, not float64"):
    prepared(pixels.astype(np.float64))
  # In the cache's dtype, cast in the graph as numpy would have cast it.
  network = settings.build()
  in_float32 = tf.function(lambda x: network(x, training=False))(images)
  assert grids.dtype == np.float16
  assert np.array_equal(grids, in_float32.numpy().astype(np.float16))


def test_an_annotations_folder_for_a_file_is_named_before_the_job(tmp_path):
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  from ingest import readers  # pylint: disable=g-import-not-at-top
  (tmp_path / "annotations").mkdir()
  (tmp_path / "train2017").mkdir()
  (tmp_path / "train2017" / "1.jpg").write_bytes(b"")
  sources = readers.dataset_splits("coco2017", [str(tmp_path / "annotations")],
                                   [str(tmp_path / "train2017")])
  with pytest.raises(feature_cache.MissingDataError,
                     match=f"the annotations file {tmp_path}/annotations is "
                     "a folder; give the file"):
    feature_cache.check_inputs(sources, "--annotations/--images")
