"""The feature-caching Beam job, shared by ImageCaptionExampleGen and
`captioner cache-features`.

Per split: read the annotations (ingest/readers.py), decode and resize
each image in parallel, run the extractor through RunInference (the Keras
model is built once per worker by the model handler, and called on batches),
and write one tf.Example per image:

  image_id              int64
  file_name             bytes
  image_path            bytes   where the image was read (local or gs://)
  image_features        bytes   the (h, w, c) feature grid, float16 (default)
  image_features_shape  int64   [h, w, c]
  captions              bytes   every usable reference caption

Output is deterministic: an image goes to shard hash(image_id) % num_shards
and each shard is written sorted by image id, so the same input gives the
same files on any runner and any number of workers. Shards are GZIP
TFRecords named like TFX's (`data_tfrecord-00000-of-00004.gz`).

Bad input never stops the job. An image that is missing, cannot be decoded,
is over the pixel limit, repeats an id or has no usable caption goes to the
dead letters (`<side_dir>/dead_letters/<split>-*.jsonl`: image id, path,
reason, detail) with a Beam counter per reason; a caption that is empty or
not UTF-8 is dropped, also with a dead letter and a counter.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import re
import struct
import time
import zlib
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import logging as std_logging

from absl import logging
import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.ml.inference import base as inference
from apache_beam.utils.windowed_value import WindowedValue
import numpy as np
import tensorflow as tf

from core import extractors
from core import features
from ingest import direct_runner_fix  # pylint: disable=unused-import
from ingest import readers

COUNTER_NAMESPACE = "feature_cache"
DEAD_LETTERS_DIR = "dead_letters"
EXTRACTOR_DIR = "extractor"
COUNTS_DIR = "_counts"
# The counts of collect_summary() (split -> processed, skipped by reason),
# written once the job is done: ImageCaptionExampleGen writes them as they
# are; `captioner cache-features` puts them under "splits", beside the
# request that made the cache, and only for a complete cache.
SUMMARY_FILE = "summary.json"
SHARD_NAME = "data_tfrecord-{:05d}-of-{:05d}.gz"
# Uncompressed feature bytes per shard; COCO 2014 train with InceptionV3
# features in float16 (256 KiB an image) makes ~160 shards of ~128 MiB.
TARGET_SHARD_BYTES = 128 * 2**20
# zlib level 1: a quarter of level 6's time (the Beam default) on feature
# grids, for a few percent more bytes (BENCHMARKS.md). Run-length matches
# only (Z_RLE): a CNN's grids after ReLU are mostly zeros (83 % of a
# MobileNetV2 grid), and RLE codes them in 0.63 ms an image instead of 1.0
# and 16 % smaller; raw `patches` grids, which barely compress, 2 % larger
# in 0.9 ms instead of 2.1 (BENCHMARKS.md). Any inflater reads it.
GZIP_LEVEL = 1
GZIP_STRATEGY = zlib.Z_RLE

# Why an image is skipped, besides the readers' reasons.
MISSING_FILE = "missing_file"
UNREADABLE_FILE = "unreadable_file"
UNDECODABLE = "undecodable_image"
TOO_MANY_PIXELS = "too_many_pixels"

PROCESSED = "processed"
# Examples found in the written shards; must equal PROCESSED.
WRITTEN = "written"


@dataclasses.dataclass(frozen=True)
class ExtractorSettings:
  """Everything a worker needs to rebuild the extractor (picklable)."""
  name: str
  weights_path: Optional[str] = None   # a saved weights file, or None
  batch_size: int = 16
  patch_image_size: int = 128
  patch_size: int = 16
  max_pixels: int = features.MAX_PIXELS  # decompression-bomb guard
  feature_dtype: str = features.DEFAULT_FEATURE_DTYPE
  alpha: float = 1.0

  @property
  def spec(self) -> extractors.ExtractorSpec:
    return extractors.extractor_spec(self.name, self.patch_image_size,
                                     self.patch_size, self.alpha)

  def build(self):
    return extractors.build_extractor(
        self.spec, self.weights_path or extractors.WEIGHTS_NONE,
        self.patch_size)

  def bytes_per_image(self) -> int:
    itemsize = np.dtype(self.feature_dtype).itemsize
    return int(np.prod(self.spec.grid)) * itemsize


def num_shards(num_images: int, bytes_per_image: int,
               target_bytes: int = TARGET_SHARD_BYTES) -> int:
  return max(1, math.ceil(num_images * bytes_per_image / target_bytes))


def dead_letter(record: Mapping[str, Any], reason: str, detail: str = "",
                caption_index: Optional[int] = None,
                namespace: str = COUNTER_NAMESPACE):
  """The dead letter of a record (a TaggedOutput "dead_letters"), counted
  under Beam counter `namespace`:`reason`."""
  beam.metrics.Metrics.counter(namespace, reason).inc()
  letter = {"image_id": record["image_id"], "path": record["path"],
            "reason": reason, "detail": detail[:500]}
  if caption_index is not None:
    letter["caption_index"] = caption_index
  return beam.pvalue.TaggedOutput("dead_letters", letter)



def record_problems(record: Mapping[str, Any]
                    ) -> Iterable[Tuple[str, str, Optional[int]]]:
  """(reason, detail, caption index) of what a reader found wrong with a
  record: dropped captions, then the image's own problem if any."""
  for reason, index in record.get("dropped", ()):
    yield reason, "", index
  if record["image_id"] >= 0 and record["problem"]:
    yield record["problem"], record.get("detail", ""), None


def check_image(record: Mapping[str, Any], max_pixels: int,
                image_size: int = 0):
  """Reads and checks a record's image as feature caching does.

  Returns (image bytes, decoded image [S, S, 3] or None when `image_size` is
  0, no problem) or (None, None, (reason, detail)): the file
  is missing or unreadable, declares more than `max_pixels` pixels, or cannot
  be decoded (it is always decoded, also when `image_size` is 0, so a
  truncated file is found here and not by whoever uses the bytes).
  """
  try:
    image_bytes = readers.read_bytes(record["path"])
  except Exception as e:  # pylint: disable=broad-except
    reason = (UNREADABLE_FILE if FileSystems.exists(record["path"])
              else MISSING_FILE)
    return None, None, (reason, str(e))
  size = extractors.image_size_of(image_bytes)
  if size and size[0] * size[1] > max_pixels:
    return None, None, (TOO_MANY_PIXELS,
                        f"{size[0]}x{size[1]} pixels, limit {max_pixels}")
  try:
    if image_size:
      image = decode_for_network(image_bytes, image_size)
    else:
      image = None
      tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  except (tf.errors.InvalidArgumentError, ValueError) as e:
    return None, None, (UNDECODABLE, str(e).strip().splitlines()[-1])
  return image_bytes, image, None


# One traced `extractors.resize_for_network` per image size, per process.
_RESIZERS = {}


def decode_for_network(image_bytes: bytes, image_size: int) -> np.ndarray:
  """The values of `extractors.load_image(image_bytes, image_size)`: uint8
  when the image is already `image_size` square (the network's graph casts
  a batch to float32: the same values, in a quarter of the bytes, and 0.4 ms
  of CPU an image instead of 1.0-1.3, BENCHMARKS.md), float32 resized
  otherwise.

  The decode is one eager op (so a bad image raises what load_image
  raises, with the same message: the dead letter's detail); the resize of
  an image of another size runs as a traced function: the eager one
  dispatches each op from Python, about twice the time.
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  if image.shape[0] == image.shape[1] == image_size:
    return image.numpy()
  resize = _RESIZERS.get(image_size)
  if resize is None:
    resize = _RESIZERS[image_size] = tf.function(
        lambda image: extractors.resize_for_network(image, image_size),
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  return resize(image).numpy()


class WorkAhead:
  """A DoFn's per-element work done in one helper thread, up to `lookahead`
  elements ahead of its outputs, which come back in input order with each
  element's window and timestamp (outputs made outside `process` must carry
  them). Worth it for work that releases the GIL (file reads, TensorFlow
  ops, zlib) while the DoFn's own thread waits in other such work; counters
  and dead letters stay in the DoFn's thread."""

  def __init__(self, name: str, lookahead: int):
    self._lookahead = lookahead
    self._pool = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix=name)
    self._pending = collections.deque()

  def submit(self, context, window, timestamp, fn, *args) -> None:
    self._pending.append((context, window, timestamp,
                          self._pool.submit(fn, *args)))

  def ready(self, drain: bool = False):
    """(context, result, window, timestamp) of the elements beyond the
    lookahead, oldest first; all of them with `drain` (the bundle's end)."""
    while self._pending and (drain or len(self._pending) > self._lookahead):
      context, window, timestamp, future = self._pending.popleft()
      yield context, future.result(), window, timestamp

  def shutdown(self) -> None:
    self._pool.shutdown()


class DecodeImage(beam.DoFn):
  """Record -> (record as JSON, image [S, S, 3], uint8 or float32 as
  `decode_for_network` returns it) or dead letters.

  Reads and decodes up to LOOKAHEAD images ahead in a thread (WorkAhead),
  in input order: file reads and TF's decode ops release the GIL, so the
  decoding runs while the network's calls downstream (RunInference, fused
  into the same stage and thread) run on the images before. Without it they
  took turns.
  """

  LOOKAHEAD = 32

  def __init__(self, image_size: int, max_pixels: int):
    self._image_size = image_size
    self._max_pixels = max_pixels

  def setup(self):
    self._ahead = WorkAhead("decode", self.LOOKAHEAD)

  def process(self, record, window=beam.DoFn.WindowParam,
              timestamp=beam.DoFn.TimestampParam):
    problems = list(record_problems(record))
    for reason, detail, index in problems:
      yield dead_letter(record, reason, detail, caption_index=index)
    # Not for a reader's note about the file itself, nor a skipped image.
    if record["image_id"] >= 0 and not (problems and problems[-1][2] is None):
      self._ahead.submit(record, window, timestamp, check_image, record,
                         self._max_pixels, self._image_size)
      yield from self._outputs(self._ahead.ready())

  def finish_bundle(self):
    yield from self._outputs(self._ahead.ready(drain=True))

  def _outputs(self, decoded):
    for record, (_, image, problem), window, timestamp in decoded:
      if problem:
        output = dead_letter(record, *problem)
        yield beam.pvalue.TaggedOutput(output.tag, WindowedValue(
            output.value, timestamp, [window]))
        continue
      key = {k: record[k]
             for k in ("image_id", "file_name", "path", "captions")}
      yield WindowedValue((json.dumps(key), image), timestamp, [window])

  def teardown(self):
    self._ahead.shutdown()


class TracedExtractor:
  """The extractor as traced functions, one per input dtype (float32 images
  in [0, 255], or uint8 ones the graph casts: `decode_for_network`'s two
  outputs; each traced at its first batch), for every batch size: ~1.5x
  faster than eager calls. Its grids come out in the cache's dtype: TF
  casts a batch to float16 in 0.03 ms an image, numpy's `astype` in 0.35
  (same values, round to nearest even)."""

  def __init__(self, settings: "ExtractorSettings", model=None):
    model = model if model is not None else settings.build()
    side = settings.spec.image_size
    grid_dtype = tf.as_dtype(settings.feature_dtype)
    # Both made here, traced at their first call: in_memory bundles call
    # at once from their threads, and a function made by each on its first
    # call would be traced twice.
    self._functions = {dtype: tf.function(
        lambda images: tf.cast(model(tf.cast(images, tf.float32),
                                     training=False), grid_dtype),
        input_signature=[tf.TensorSpec([None, side, side, 3], dtype)])
                       for dtype in (tf.float32, tf.uint8)}

  def __call__(self, images):
    dtype = tf.as_dtype(images.dtype)
    if dtype not in self._functions:
      raise TypeError(f"images must be float32 or uint8, not {dtype.name}")
    return self._functions[dtype](images)


# The extractor prepared_extractor built, traced, by the settings it
# yielded, inside its block: a job that runs in this process (the
# in_memory DirectRunner) takes it instead of building the network again
# from the saved weights (2.0-2.5 s for MobileNetV2 on 2 vCPUs,
# BENCHMARKS.md), and every split's job the same traced function; workers
# in other processes build their own.
_PREPARED: Dict["ExtractorSettings", Any] = {}


class ExtractorModelHandler(inference.ModelHandler):
  """Builds the Keras extractor once per worker and runs it on batches."""

  def __init__(self, settings: ExtractorSettings):
    self._settings = settings

  def load_model(self):
    traced = _PREPARED.get(self._settings)
    return traced if traced is not None else TracedExtractor(self._settings)

  def get_num_bytes(self, batch) -> int:
    # Beam's default pickles the batch only to measure it for a metric
    # (9.6 MB of images per 16 for MobileNetV2, holding the GIL).
    return sum(image.nbytes for image in batch)

  def run_inference(self, batch, model, inference_args=None):
    # uint8 if every image is, else float32 (exact for uint8 values).
    grids = model(np.stack(batch)).numpy()
    # Only the features travel on: the decoded image is not kept.
    return [inference.PredictionResult(None, grid) for grid in grids]

  def batch_elements_kwargs(self):
    # Full batches: BatchElements would otherwise start at one image and
    # grow, and small batches cost 2-4x more per image on a CNN.
    size = self._settings.batch_size
    return {"min_batch_size": size, "max_batch_size": size}


def to_example(record: Mapping[str, Any], feature_grid: np.ndarray,
               dtype: str) -> tf.train.Example:
  grid = np.asarray(feature_grid, dtype=dtype)  # already dtype: no copy

  def bytes_feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

  def int_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

  return tf.train.Example(features=tf.train.Features(feature={
      features.IMAGE_ID: int_feature([record["image_id"]]),
      features.FILE_NAME: bytes_feature(
          [record["file_name"].encode("utf-8")]),
      features.IMAGE_PATH: bytes_feature([record["path"].encode("utf-8")]),
      features.IMAGE_FEATURES: bytes_feature([grid.tobytes()]),
      features.IMAGE_FEATURES_SHAPE: int_feature(list(grid.shape)),
      features.CAPTIONS: bytes_feature([c.encode("utf-8")
                                        for c in record["captions"]]),
  }))


class ProgressDoFn(beam.DoFn):
  """A DoFn that counts what each instance did and logs "<job> [split]:
  worker PID.N has <verb> C of T images (R/s)": its own count C of the
  split's T listed images, at its first image, every REPORT_SECONDS and at
  the end of a bundle (so the last count arrives). `captioner` relays these
  from every worker and prints one total (captioner/console.py); the wording
  is what it parses. Subclasses name the job and verb and call `counted()`.
  """

  REPORT_SECONDS = 5.0
  # A plain logger (propagating to the root, where Beam's workers forward
  # records to the job service), so that a console can also listen to it in
  # the main process, where in_memory DirectRunner jobs run the DoFns.
  LOG = std_logging.getLogger(__name__)
  JOB = ""     # e.g. "feature cache"
  VERB = ""    # e.g. "cached"
  _instances = 0   # per process: several instances may run in one worker

  def __init__(self, split: str, total: int):
    self._split = split
    self._total = total

  def setup(self):
    ProgressDoFn._instances += 1
    self._worker = f"{os.getpid()}.{ProgressDoFn._instances}"
    self._count = self._reported_count = 0
    self._started = self._reported = time.time()

  def _report(self, now):
    self._reported, self._reported_count = now, self._count
    self.LOG.info("%s [%s]: worker %s has %s %d of %d images (%.1f/s)",
                  self.JOB, self._split, self._worker, self.VERB, self._count,
                  self._total, self._count / max(now - self._started, 1e-9))

  def counted(self):
    """One more image done: counted, and reported when it is time."""
    self._count += 1
    now = time.time()
    if now - self._reported >= self.REPORT_SECONDS or self._count == 1:
      self._report(now)

  def finish_bundle(self):
    if self._count != self._reported_count:
      self._report(time.time())


class ToExample(ProgressDoFn):
  """(record JSON, features) -> (image_id, its tf.Example as a deflated
  TFRecord: `encode_example`); progress as "feature cache [split]: worker
  PID.N has cached C of T images".

  The encoding runs in a thread (WorkAhead), a batch behind: with one
  bundle, RunInference's next call on the network waited for it.
  """

  JOB, VERB = "feature cache", "cached"
  LOOKAHEAD = 16

  def __init__(self, dtype: str, split: str, total: int):
    super().__init__(split, total)
    self._dtype = dtype

  def setup(self):
    super().setup()
    self._ahead = WorkAhead("to_example", self.LOOKAHEAD)

  def process(self, element, window=beam.DoFn.WindowParam,
              timestamp=beam.DoFn.TimestampParam):
    key, result = element
    record = json.loads(key)
    beam.metrics.Metrics.counter(COUNTER_NAMESPACE, PROCESSED).inc()
    self.counted()
    self._ahead.submit(record["image_id"], window, timestamp, encode_example,
                       record, result.inference, self._dtype)
    yield from self._outputs(self._ahead.ready())

  def finish_bundle(self):
    super().finish_bundle()
    yield from self._outputs(self._ahead.ready(drain=True))

  @staticmethod
  def _outputs(encoded):
    for image_id, deflated, window, timestamp in encoded:
      yield WindowedValue((image_id, deflated), timestamp, [window])

  def teardown(self):
    self._ahead.shutdown()


def encode_example(record: Mapping[str, Any], feature_grid: np.ndarray,
                   dtype: str) -> Tuple[bytes, int, int]:
  """`to_example`, serialized deterministically (map entries in a fixed
  order: the same bytes everywhere), as a `deflate_record`."""
  return deflate_record(to_example(record, feature_grid, dtype)
                        .SerializeToString(deterministic=True))


def shard_of(image_id: int, shards: int) -> int:
  return readers.id_hash(image_id) % shards


# A GZIP member header (RFC 1952): deflate, no name, mtime 0, the fastest
# level's XFL, unknown OS; and the empty final deflate block that ends it.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
DEFLATE_END = b"\x03\x00"


def deflate_record(serialized: bytes) -> Tuple[bytes, int, int]:
  """A TFRecord (length, CRCs, data), deflated on its own and ended by a
  sync flush: (deflate blocks, CRC-32 of the record, record length).

  Compressing each example where it is made, before the shards are grouped,
  spreads GZIP over the job, where the forward pass leaves CPU free, instead
  of leaving it all for after the last batch; and the grouping moves a
  quarter of the bytes. `write_shard` joins the blocks of a shard in image
  id order into one GZIP member (deflate blocks that are not final can be
  concatenated; the member's CRC-32 is combined from the records').
  """
  buffer = io.BytesIO()
  _TFRecordUtil.write_record(buffer, serialized)
  record = buffer.getvalue()
  deflater = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS,
                              zlib.DEF_MEM_LEVEL, GZIP_STRATEGY)
  blocks = deflater.compress(record) + deflater.flush(zlib.Z_SYNC_FLUSH)
  return blocks, zlib.crc32(record), len(record)


# CRC-32's polynomial, bit-reflected as zlib computes it.
_CRC32_POLY = 0xEDB88320


def _multiply_mod_poly(a: int, b: int) -> int:
  """a * b modulo CRC-32's polynomial, both reflected (zlib's multmodp)."""
  product = 0
  bit = 1 << 31
  while a:
    if a & bit:
      product ^= b
      a ^= bit
    bit >>= 1
    b = (b >> 1) ^ _CRC32_POLY if b & 1 else b >> 1
  return product


@functools.lru_cache(maxsize=4096)
def _shift_operator(length: int) -> int:
  """x^(8 * length) modulo the polynomial: multiplying a CRC by it runs
  the CRC on through `length` zero bytes. Cached: a shard's records have a
  few hundred distinct lengths (zlib's x2nmodp, by squaring)."""
  power = 1 << 30     # x^(2^k) for bit k of 8 * length; x^1 first
  operator = 1 << 31  # x^0
  bits = 8 * length
  while bits:
    if bits & 1:
      operator = _multiply_mod_poly(power, operator)
    power = _multiply_mod_poly(power, power)
    bits >>= 1
  return operator


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
  """CRC-32 of A + B from crc1 = CRC-32 of A, crc2 of B and len(B) (zlib's
  crc32_combine, which Python does not expose). CRC-32 is affine: crc1 run
  on through len(B) zero bytes, XOR crc2. In GF(2) arithmetic, a few
  microseconds a record; running zlib.crc32 over the zero bytes took 60
  (0.3 s of the 5,000-photo job's tail, BENCHMARKS.md)."""
  return _multiply_mod_poly(_shift_operator(length2), crc1) ^ crc2


def write_shard(shard: int,
                examples: Iterable[Tuple[int, Tuple[bytes, int, int]]],
                output_dir: str, shards: int) -> Tuple[str, int]:
  """Writes one shard of (image_id, `deflate_record`) as a GZIP TFRecord
  file, sorted by image id (a retry rewrites the same file); returns its
  path and how many examples it holds."""
  path = FileSystems.join(output_dir, SHARD_NAME.format(shard, shards))
  written = crc = size = 0
  with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED
                          ) as f:
    f.write(GZIP_HEADER)
    for _, (blocks, record_crc, length) in sorted(examples):
      f.write(blocks)
      crc = crc32_combine(crc, record_crc, length)
      size += length
      written += 1
    f.write(DEFLATE_END + struct.pack("<II", crc, size & 0xFFFFFFFF))
  return path, written


def _with_empty_shards(written: Iterable[Tuple[str, int]], output_dir: str,
                       shards: int) -> Iterable[Tuple[str, int]]:
  """Every shard's (path, examples written): those `written` lists, then
  each shard no example went to, written now, empty."""
  done = dict(written)
  yield from sorted(done.items())
  for shard in range(shards):
    path = FileSystems.join(output_dir, SHARD_NAME.format(shard, shards))
    if path not in done:
      yield write_shard(shard, (), output_dir, shards)


@beam.ptransform_fn
def WriteShards(examples, output_dir: str, shards: int):  # pylint: disable=invalid-name
  """(image_id, `deflate_record`) -> `shards` files, every one written
  even if empty; returns (path, examples written) per shard.

  The empty shards are written after the others, from the list of those
  written: a Flatten of the examples with one marker per shard before the
  GroupByKey did it in one step, but the FnApiRunner (DirectRunner) runs a
  multi-input Flatten as a stage of its own, one more pass of every grid
  through memory (1.0 s of 2,000 Flickr8k grids, plus 0.4 s for the
  markers' own stage; BENCHMARKS.md).
  """
  written = (examples
             | "ShardKey" >> beam.Map(
                 lambda kv: (shard_of(kv[0], shards), kv))
             | "GroupShards" >> beam.GroupByKey()
             | "Write" >> beam.MapTuple(
                 lambda shard, group: write_shard(shard, group, output_dir,
                                                  shards)))
  return (written
          | "AllWritten" >> beam.combiners.ToList()
          | "WithEmpty" >> beam.FlatMap(_with_empty_shards, output_dir,
                                        shards))


class CacheFeatures(beam.PTransform):
  """PBegin -> a split's shards, dead letters and counts, all written.

  Returns the PCollection of [key, count] pairs ("processed" and each skip
  reason), also written to `<side_dir>/_counts/<split>-*.jsonl`.
  """

  def __init__(self, source: readers.Source, settings: ExtractorSettings,
               output_dir: str, side_dir: str, split: str,
               expected_images: int = 0, shards: int = 1):
    super().__init__()
    self._source = source
    self._settings = settings
    self._output_dir = output_dir
    self._side_dir = side_dir
    self._split = split
    self._expected = expected_images
    self._shards = shards

  def expand(self, pbegin):
    settings = self._settings
    decoded = (
        pbegin
        | "Source" >> beam.Create([self._source])
        | "ReadAnnotations" >> beam.FlatMap(readers.read)
        # Spread the images over workers before the expensive steps.
        | "Reshuffle" >> beam.Reshuffle()
        | "DecodeImages" >> beam.ParDo(DecodeImage(
            settings.spec.image_size, settings.max_pixels)).with_outputs(
                "dead_letters", main="images"))
    examples = (
        decoded.images
        | "ExtractFeatures" >> inference.RunInference(
            inference.KeyedModelHandler(ExtractorModelHandler(settings)))
        | "ToExample" >> beam.ParDo(ToExample(
            settings.feature_dtype, self._split, self._expected)))
    written = examples | "WriteShards" >> WriteShards(  # pylint: disable=no-value-for-parameter
        self._output_dir, self._shards)

    _ = (decoded.dead_letters
         | "DeadLetterJson" >> beam.Map(json.dumps, sort_keys=True)
         | "WriteDeadLetters" >> beam.io.WriteToText(
             FileSystems.join(self._side_dir, DEAD_LETTERS_DIR, self._split),
             ".jsonl"))
    counts = (
        (examples | "Processed" >> beam.Map(lambda _: PROCESSED),
         decoded.dead_letters | "Reasons" >> beam.Map(lambda d: d["reason"]))
        | "AllOutcomes" >> beam.Flatten()
        | "Count" >> beam.combiners.Count.PerElement())
    # What the shards hold, counted as they are written: check_complete()
    # compares it with what was processed.
    written = (written
               | "WrittenCount" >> beam.MapTuple(lambda _, n: (WRITTEN, n))
               | "SumWritten" >> beam.CombinePerKey(sum))
    counts = (counts, written) | "WithWritten" >> beam.Flatten()
    _ = (counts
         | "CountJson" >> beam.MapTuple(lambda k, n: json.dumps([k, n]))
         | "WriteCounts" >> beam.io.WriteToText(
             FileSystems.join(self._side_dir, COUNTS_DIR, self._split),
             ".jsonl"))
    return counts


def split_source(dataset: str, input_base: str, annotations: str,
                 split: Mapping[str, str]) -> readers.Source:
  """The readers.Source of one configured split; paths under input_base."""
  subset = split.get("subset", "")
  if dataset == "flickr8k" and subset and not subset.startswith("hash:"):
    subset = readers.join(input_base, subset)  # a split list file
  return readers.Source(dataset, readers.join(input_base, annotations),
                        readers.join(input_base, split["images"]), subset)


class MissingDataError(FileNotFoundError):
  """The dataset's files are not where the config says."""


def _folder_has_files(folder: str) -> bool:
  if "://" not in folder:
    return os.path.isdir(folder)
  # Object stores have no folders: look for one object under the prefix.
  match = FileSystems.match([FileSystems.join(folder, "*")], limits=[1])[0]
  return bool(match.metadata_list)


def check_inputs(sources: Mapping[str, readers.Source], root_key: str =
                 "data.root", root: str = "") -> None:
  """Fails before any work if a split's annotations, split list or image
  folder is missing, naming the setting and the path it expected."""
  problems = []
  for name, source in sources.items():
    for what, path, exists in (
        ("annotations file", source.annotations, FileSystems.exists),
        ("split list", source.subset if source.dataset == "flickr8k"
         and source.subset and not source.subset.startswith("hash:")
         else "", FileSystems.exists),
        ("image folder", source.images, _folder_has_files)):
      if path and not exists(path):
        problems.append(f"{name} split: no {what} {path}")
      elif path and what != "image folder" and os.path.isdir(path):
        # Read as a file by the job, it would fail there, on a worker.
        problems.append(f"{name} split: the {what} {path} is a folder; "
                        "give the file")
  if not problems:
    return
  if not root:  # a command's own flags
    raise MissingDataError(f"{root_key}: " + "; ".join(problems) + ".")
  raise MissingDataError(
      f"{root_key} {root!r} does not hold the dataset the config describes: "
      + "; ".join(problems)
      + ". Check data.root and the data.* paths under it (relative to it).")


class IncompleteCacheError(RuntimeError):
  """The shards hold fewer examples than the job processed."""


def check_complete(summary: Mapping[str, Mapping[str, Any]]) -> None:
  """Every processed example is in the shards, or the job fails loudly.

  Seen twice here on the multi-processing DirectRunner (168 and 1,472 of
  5,000 processed examples missing from the shards, the counters unaware),
  from a race in Beam's runner that ingest/direct_runner_fix.py now works
  around. Training on such a cache would silently lose data.
  """
  for split, counts in sorted(summary.items()):
    if WRITTEN in counts and counts[WRITTEN] != counts[PROCESSED]:
      raise IncompleteCacheError(
          f"{split} split: {counts[PROCESSED]} images processed but "
          f"{counts[WRITTEN]} written to the shards; the Beam runner lost "
          "examples. Run again (with DirectRunner, "
          "--direct_running_mode=in_memory avoids the multi-process "
          "shuffle).")


def check_nonempty(summary: Mapping[str, Mapping[str, Any]],
                   sources: Mapping[str, readers.Source]) -> None:
  """A split that yielded no example is an error that says why: usually
  an image folder that does not hold the listed files."""
  for name, source in sources.items():
    counts = summary.get(name, {PROCESSED: 0, "skipped": {}})
    if counts[PROCESSED]:
      continue
    skipped = counts["skipped"]
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
    if skipped.get(MISSING_FILE) and len(skipped) == 1:
      raise MissingDataError(
          f"{name} split: none of the {skipped[MISSING_FILE]} images that "
          f"{source.annotations} lists exists in the image folder "
          f"{source.images}; is that the right folder?")
    raise MissingDataError(
        f"{name} split: no usable image among those {source.annotations} "
        f"lists ({reasons or 'it lists none'}); see the dead letters")


def cache_splits(pipeline, sources: Mapping[str, readers.Source],
                 settings: ExtractorSettings,
                 split_dirs: Mapping[str, str], side_dir: str,
                 report=logging.info) -> None:
  """Adds one CacheFeatures job per split to a Beam pipeline."""
  for name, source in sources.items():
    expected = readers.count_images(source)
    shards = num_shards(expected, settings.bytes_per_image())
    report(f"feature cache [{name}]: {expected} images listed, "
           f"{shards} shard(s)")
    _ = pipeline | f"Cache[{name}]" >> CacheFeatures(
        source, settings, split_dirs[name], side_dir, name, expected, shards)


@contextlib.contextmanager
def prepared_extractor(config: Mapping[str, Any], out_dir: str
                       ) -> Iterator[ExtractorSettings]:
  """Builds the extractor once and saves the weights every worker loads;
  yields the settings that name them.

  Building here (and, for imagenet, downloading) makes a bad weights setting
  fail before any worker starts, and every worker and the exported model
  then use the same network. Workers in this process use this very network
  inside the `with` block, and only there.
  """
  settings = ExtractorSettings(
      name=config["extractor"], batch_size=int(config["batch_size"]),
      patch_image_size=int(config["patch_image_size"]),
      patch_size=int(config["patch_size"]),
      max_pixels=int(config["max_pixels"]),
      feature_dtype=config["feature_dtype"],
      alpha=float(config.get("alpha", 1.0)))
  model = extractors.build_extractor(settings.spec, config["weights"],
                                     settings.patch_size)
  extractor_dir = os.path.join(out_dir, EXTRACTOR_DIR)
  weights_path = extractors.save_extractor_weights(model, extractor_dir)
  write_json(os.path.join(extractor_dir, "extractor.json"), {
      "extractor": settings.name, "image_size": settings.spec.image_size,
      "grid": list(settings.spec.grid), "weights": config["weights"],
      "weights_file": os.path.basename(weights_path) if weights_path else None,
      "patch_size": settings.patch_size,
      "feature_dtype": settings.feature_dtype, "alpha": settings.alpha,
      "weights_checksum": extractors.weights_checksum(config["weights"])})
  settings = dataclasses.replace(settings, weights_path=weights_path)
  _PREPARED[settings] = TracedExtractor(settings, model)
  try:
    yield settings
  finally:
    _PREPARED.pop(settings, None)


class CacheMismatchError(ValueError):
  """A feature cache was made with other features than the config's."""


def check_provenance(cache_dir: str, expected: Mapping[str, Any],
                     weights: str) -> Dict[str, Any]:
  """Raises CacheMismatchError, naming both sides, unless the cache in
  `cache_dir` was made as `expected` (`extractors.provenance()` of the
  config, whose
  `features.weights` is `weights`); returns what the cache recorded."""
  path = os.path.join(cache_dir, EXTRACTOR_DIR, "extractor.json")
  if not tf.io.gfile.exists(path):
    raise CacheMismatchError(
        f"{cache_dir} is not a feature cache: no {path} (write one with "
        "`captioner cache-features`)")
  with tf.io.gfile.GFile(path) as f:
    made = json.load(f)
  if "weights_checksum" not in made:
    raise CacheMismatchError(
        f"the feature cache {cache_dir} does not record its weights' "
        "checksum (made by an older `captioner cache-features`): write it "
        "again")
  differences = [
      f"{key}: features.* gives {value!r} "
      + (f"(features.weights {weights}) " if key == "weights_checksum" else "")
      + f"but the cache was made with {made.get(key)!r}"
      + (f" (weights {made.get('weights')})"
         if key == "weights_checksum" else "")
      for key, value in expected.items() if made.get(key) != value]
  if differences:
    raise CacheMismatchError(
        f"the feature cache {cache_dir} was made with other features than "
        "this config's; serving would compute features the model was not "
        "trained on. " + "; ".join(differences))
  return made


def write_json(path: str, value: Any) -> None:
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)


IMAGE_REASONS = (MISSING_FILE, UNREADABLE_FILE, UNDECODABLE, TOO_MANY_PIXELS,
                 readers.DUPLICATE_IMAGE_ID, readers.NO_CAPTIONS)
CAPTION_REASONS = (readers.EMPTY_CAPTION, readers.INVALID_UTF8_CAPTION,
                   readers.MALFORMED_LINE)


def collect_summary(side_dir: str) -> Dict[str, Dict[str, Any]]:
  """Split -> {processed, skipped: {reason: n}, dropped_captions: {...}}.

  Reads (and then removes) the count files the job wrote.
  """
  summary = {}
  counts_dir = FileSystems.join(side_dir, COUNTS_DIR)
  match = FileSystems.match([FileSystems.join(counts_dir, "*")])[0]
  for metadata in sorted(match.metadata_list, key=lambda m: m.path):
    split = re.sub(r"-\d+-of-\d+\.jsonl$", "",
                   metadata.path.rsplit("/", 1)[-1])
    counts = summary.setdefault(
        split, {PROCESSED: 0, "skipped": {}, "dropped_captions": {}})
    for line in readers.read_bytes(metadata.path).decode().splitlines():
      key, n = json.loads(line)
      if key in (PROCESSED, WRITTEN):
        counts[key] = counts.get(key, 0) + n
      else:
        group = "dropped_captions" if key in CAPTION_REASONS else "skipped"
        counts[group][key] = counts[group].get(key, 0) + n
  FileSystems.delete([counts_dir])
  return summary


def summary_lines(summary: Mapping[str, Mapping[str, Any]]) -> Iterable[str]:
  for split, counts in sorted(summary.items()):
    skipped = counts["skipped"]
    dropped = counts["dropped_captions"]
    yield (f"[{split}] {counts[PROCESSED]} images processed, "
           f"{sum(skipped.values())} skipped"
           + "".join(f", {n} {reason}" for reason, n in sorted(skipped.items()))
           + (f"; {sum(dropped.values())} captions dropped"
              + "".join(f", {n} {reason}"
                        for reason, n in sorted(dropped.items()))
              if dropped else ""))
