"""Batch captioning with Beam: `captioner caption-dataset`.

The same pipeline on DirectRunner and DataflowRunner: records (a folder or
glob of image files, any dataset layout ingest/readers.py knows, or a
feature cache's tf.Examples) -> checked inputs -> RunInference with
CaptionModelHandler (the SavedModel loaded once per worker, called on
batches) -> one JSON line per image. Written under OUT:

  captions.jsonl        one line per image, sorted by image id: image_id,
                        file_name, path, caption (and references, when the
                        source has them)
  results.json          COCO results, [{"image_id", "caption"}] sorted by id:
                        what `captioner bleu --results` reads
  references.json       the references in COCO captions format (only when
                        the source has them): `captioner bleu --annotations`
  dead_letters/<split>-*.jsonl   every image left out: id, path, reason, detail
  summary.json          written last: counts per split and the request

Bad input is checked before batching with feature caching's own checks and
reasons (ingest/feature_cache.py: missing_file, unreadable_file,
undecodable_image, too_many_pixels, and the readers' duplicate_image_id,
no_captions), so one corrupt file never fails a batch; an image the model
still refuses (a batch that fails is retried one image at a time) is
`refused_by_model`. Each reason and `processed` is a Beam counter in the
namespace `caption_dataset`.
"""

import dataclasses
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference import base as inference
import numpy as np

from core import features
from ingest import feature_cache
from ingest import readers
from serving import client

COUNTER_NAMESPACE = "caption_dataset"
PROCESSED = feature_cache.PROCESSED   # images captioned
REFUSED_BY_MODEL = "refused_by_model"
WRONG_FEATURE_SHAPE = "wrong_feature_shape"

CAPTIONS_FILE = "captions.jsonl"
RESULTS_FILE = "results.json"
REFERENCES_FILE = "references.json"
SUMMARY_FILE = feature_cache.SUMMARY_FILE
DEAD_LETTERS_DIR = feature_cache.DEAD_LETTERS_DIR
SHARDS_DIR = "_captions"   # the job's caption shards, merged at the end

IMAGES = "images"       # input kinds
FEATURES = "features"


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """What a worker needs to load the model and call it (picklable)."""
  model_dir: str          # a SavedModel folder (resolved before the job)
  inputs: str = IMAGES    # IMAGES: image bytes; FEATURES: cached grids
  beam: int = 0           # beam search width (IMAGES only); 0: greedy
  length_penalty: float = 0.0
  batch_size: int = 16


def check_model(model_dir: str, inputs: str = IMAGES, beam_width: int = 0
                ) -> str:
  """The SavedModel folder to use (`client.model_version_dir`), once it is
  known to have the signature the request needs; raises CaptionError."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = client.model_version_dir(model_dir)
  if beam_width < 0:
    raise client.CaptionError("--beam must not be negative")
  if inputs == FEATURES and beam_width:
    raise client.CaptionError(
        f"--beam needs images: {features.FROM_FEATURES} decodes as the export "
        "chose (greedy unless it set a serving beam width)")
  wanted = (features.FROM_FEATURES if inputs == FEATURES else
            features.BEAM_SEARCH if beam_width else features.SERVING_DEFAULT)
  signatures = tf.saved_model.load(path).signatures
  if wanted not in signatures:
    raise client.CaptionError(f"{path} has no {wanted} signature")
  return path


def feature_grid(model_dir: str):
  """The (h, w, c) grid the model's from_features signature takes."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  signature = tf.saved_model.load(model_dir).signatures[features.FROM_FEATURES]
  spec = signature.structured_input_signature[1][features.IMAGE_FEATURES]
  return tuple(spec.shape.as_list()[1:])


class _Loaded:
  """The loaded SavedModel (kept alive) and the function to call."""

  def __init__(self, settings: ModelSettings):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.model = tf.saved_model.load(settings.model_dir)
    signatures = self.model.signatures
    if settings.inputs == FEATURES:
      fn = signatures[features.FROM_FEATURES]
      self.call = lambda batch: fn(**{features.IMAGE_FEATURES: tf.constant(
          np.stack(batch).astype(np.float32))})
    elif settings.beam:
      fn = signatures[features.BEAM_SEARCH]
      width = tf.constant(settings.beam, tf.int32)
      penalty = tf.constant(settings.length_penalty, tf.float32)
      self.call = lambda batch: fn(
          **{features.IMAGE_BYTES: tf.constant(batch, tf.string)},
          beam_width=width, length_penalty=penalty)
    else:
      fn = signatures[features.SERVING_DEFAULT]
      self.call = lambda batch: fn(
          **{features.IMAGE_BYTES: tf.constant(batch, tf.string)})

  def captions(self, batch) -> List[str]:
    out = self.call(batch)[features.CAPTION].numpy()
    return [c.decode("utf-8") for c in out]


class CaptionModelHandler(inference.ModelHandler):
  """Loads the SavedModel once per worker; captions batches of image bytes
  (serving_default, or beam_search) or of feature grids (from_features).

  A batch the model refuses as a whole is captioned one image at a time;
  an image it still refuses gets {"error": message} instead of a caption.
  """

  def __init__(self, settings: ModelSettings):
    self._settings = settings

  def load_model(self) -> _Loaded:
    return _Loaded(self._settings)

  def run_inference(self, batch, model, inference_args=None):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    batch = list(batch)
    try:
      outcomes = [{"caption": c} for c in model.captions(batch)]
    except tf.errors.InvalidArgumentError:
      outcomes = []
      for one in batch:
        try:
          outcomes.append({"caption": model.captions([one])[0]})
        except tf.errors.InvalidArgumentError as e:
          outcomes.append({"error": _reason(e.message)})
    # Only the caption travels on, not the image.
    return [inference.PredictionResult(None, o) for o in outcomes]

  def batch_elements_kwargs(self):
    # Full batches from the start (BatchElements would start at one).
    size = self._settings.batch_size
    return {"min_batch_size": size, "max_batch_size": size}


def _reason(message: str) -> str:
  """The line of a TensorFlow error that says what is wrong with the image
  (the export's checks name image_bytes[i])."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  named = [line for line in lines if "image_bytes[" in line]
  return (named or lines or ["refused"])[0]


def _letter(record, reason, detail="", caption_index=None):
  return feature_cache.dead_letter(record, reason, detail, caption_index,
                                   namespace=COUNTER_NAMESPACE)


def _key(record: Mapping[str, Any]) -> str:
  return json.dumps({k: record[k] for k in
                     ("image_id", "file_name", "path", "captions")})


class CheckImage(beam.DoFn):
  """Record -> (record JSON, image bytes), or its dead letters: the reader's
  problems and feature caching's checks (`feature_cache.check_image`)."""

  def __init__(self, max_pixels: int):
    self._max_pixels = max_pixels

  def process(self, record):
    problems = list(feature_cache.record_problems(record))
    for reason, detail, index in problems:
      yield _letter(record, reason, detail, index)
    if record["image_id"] < 0 or (problems and problems[-1][2] is None):
      return
    image_bytes, _, problem = feature_cache.check_image(record,
                                                        self._max_pixels)
    if problem:
      yield _letter(record, *problem)
      return
    yield _key(record), image_bytes


class ParseCachedExample(beam.DoFn):
  """A feature cache's serialized tf.Example -> (record JSON, float32 grid),
  or a dead letter if its grid is not the model's."""

  def __init__(self, grid):
    self._grid = tuple(grid)

  def process(self, serialized):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    feature = tf.train.Example.FromString(serialized).features.feature
    record = {
        "image_id": feature[features.IMAGE_ID].int64_list.value[0],
        "file_name": feature[features.FILE_NAME].bytes_list.value[0].decode(),
        "path": feature[features.IMAGE_PATH].bytes_list.value[0].decode(),
        "captions": [c.decode() for c in
                     feature[features.CAPTIONS].bytes_list.value]}
    shape = tuple(feature[features.IMAGE_FEATURES_SHAPE].int64_list.value)
    data = feature[features.IMAGE_FEATURES].bytes_list.value[0]
    if shape != self._grid:
      yield _letter(record, WRONG_FEATURE_SHAPE,
                    f"grid {list(shape)}, the model takes {list(self._grid)}")
      return
    # float16 or float32, as the cache stored it (features.FEATURE_DTYPES).
    dtype = np.float16 if len(data) == 2 * int(np.prod(shape)) else np.float32
    grid = np.frombuffer(data, dtype).reshape(shape).astype(np.float32)
    yield _key(record), grid


class ToCaption(feature_cache.ProgressDoFn):
  """(record JSON, PredictionResult) -> a captions.jsonl line, or a dead
  letter `refused_by_model`; progress as "caption dataset [split]: worker
  PID.N has captioned C of T images" (captioner/console.py relays it)."""

  JOB, VERB = "caption dataset", "captioned"

  def process(self, element):
    key, result = element
    record = json.loads(key)
    outcome = result.inference
    if "error" in outcome:
      yield _letter(record, REFUSED_BY_MODEL, outcome["error"])
      return
    beam.metrics.Metrics.counter(COUNTER_NAMESPACE, PROCESSED).inc()
    self.counted()
    line = {"image_id": record["image_id"], "file_name": record["file_name"],
            "path": record["path"], "caption": outcome["caption"]}
    if record["captions"]:
      line["references"] = record["captions"]
    yield json.dumps(line, sort_keys=True)


class CaptionSplit(beam.PTransform):
  """PBegin -> one split's caption lines, dead letters and counts, written
  under `out` (SHARDS_DIR, DEAD_LETTERS_DIR, feature_cache.COUNTS_DIR)."""

  def __init__(self, split: str, settings: ModelSettings, out: str,
               records=None, cache_files: str = "", grid=None,
               max_pixels: int = features.MAX_PIXELS, total: int = 0):
    super().__init__()
    self._split = split
    self._settings = settings
    self._out = out
    self._records = records   # a callable () -> iterable of records
    self._cache_files = cache_files
    self._grid = grid
    self._max_pixels = max_pixels
    self._total = total

  def expand(self, pbegin):
    if self._settings.inputs == FEATURES:
      checked = (
          pbegin
          | "ReadCache" >> beam.io.ReadFromTFRecord(
              self._cache_files,
              compression_type=beam.io.filesystem.CompressionTypes.GZIP)
          | "ParseExamples" >> beam.ParDo(ParseCachedExample(
              self._grid)).with_outputs("dead_letters", main="inputs"))
    else:
      checked = (
          pbegin
          | "Source" >> beam.Create([None])
          | "ReadRecords" >> beam.FlatMap(
              lambda _, read=self._records: read())
          # Spread the images over workers before the expensive steps.
          | "Reshuffle" >> beam.Reshuffle()
          | "CheckImages" >> beam.ParDo(CheckImage(
              self._max_pixels)).with_outputs("dead_letters", main="inputs"))
    captioned = (
        checked.inputs
        | "Caption" >> inference.RunInference(
            inference.KeyedModelHandler(CaptionModelHandler(self._settings)))
        | "ToCaption" >> beam.ParDo(ToCaption(
            self._split, self._total)).with_outputs(
                "dead_letters", main="lines"))
    dead_letters = ((checked.dead_letters, captioned.dead_letters)
                    | "AllDeadLetters" >> beam.Flatten())
    _ = (captioned.lines
         | "WriteCaptions" >> beam.io.WriteToText(
             FileSystems.join(self._out, SHARDS_DIR, self._split), ".jsonl"))
    _ = (dead_letters
         | "DeadLetterJson" >> beam.Map(json.dumps, sort_keys=True)
         | "WriteDeadLetters" >> beam.io.WriteToText(
             FileSystems.join(self._out, DEAD_LETTERS_DIR, self._split),
             ".jsonl"))
    _ = ((captioned.lines | "Processed" >> beam.Map(lambda _: PROCESSED),
          dead_letters | "Reasons" >> beam.Map(lambda d: d["reason"]))
         | "AllOutcomes" >> beam.Flatten()
         | "Count" >> beam.combiners.Count.PerElement()
         | "CountJson" >> beam.MapTuple(lambda k, n: json.dumps([k, n]))
         | "WriteCounts" >> beam.io.WriteToText(
             FileSystems.join(self._out, feature_cache.COUNTS_DIR,
                              self._split), ".jsonl"))


# ----------------------------------------------------------------------------
# What to caption, and the job around the transform.


@dataclasses.dataclass
class Split:
  name: str
  records: Any = None       # () -> records (images)
  cache_files: str = ""     # a glob of tf.Example shards (features)
  total: int = 0            # images listed (for progress)


def _read_source(source: readers.Source):
  return lambda: readers.read(source)


def _read_files(pattern: str):
  return lambda: readers.image_files(pattern)


def image_splits(images: str, dataset: str = "",
                 annotations: Optional[List[str]] = None,
                 split_names: Optional[List[str]] = None) -> List[Split]:
  """The splits of a folder or glob of images (one split, "images"), or of
  a dataset layout (`readers.dataset_splits`, its inputs checked first)."""
  if not dataset:
    total = sum(1 for _ in readers.image_files(images))
    return [Split(IMAGES, _read_files(images), total=total)]
  sources = readers.dataset_splits(dataset, annotations, [images],
                                   split_names)
  feature_cache.check_inputs(sources, "--annotations/--images")
  return [Split(name, _read_source(source),
                total=readers.count_images(source))
          for name, source in sources.items()]


def cache_splits(cache_dir: str) -> List[Split]:
  """The splits of a feature cache (`captioner cache-features --out`, one
  folder per split) or of one split folder of it."""
  shard = "data_tfrecord-*.gz"
  summary_path = FileSystems.join(cache_dir, SUMMARY_FILE)
  counts = {}
  if FileSystems.exists(summary_path):
    counts = json.loads(readers.read_bytes(summary_path)).get("splits", {})
  if FileSystems.match([FileSystems.join(cache_dir, shard)])[0].metadata_list:
    name = cache_dir.rstrip("/").rsplit("/", 1)[-1]
    return [Split(name, cache_files=FileSystems.join(cache_dir, shard))]
  found = FileSystems.match([FileSystems.join(cache_dir, "*", shard)])[0]
  names = sorted({m.path.rsplit("/", 2)[-2] for m in found.metadata_list})
  if not names:
    raise FileNotFoundError(f"--features {cache_dir}: no {shard} there nor "
                            "in a split folder under it (give the --out of "
                            "`captioner cache-features`, or one split of it)")
  return [Split(n, cache_files=FileSystems.join(cache_dir, n, shard),
                total=counts.get(n, {}).get(PROCESSED, 0)) for n in names]


def add_jobs(pipeline, splits: Iterable[Split], settings: ModelSettings,
             out: str, max_pixels: int = features.MAX_PIXELS) -> None:
  """One CaptionSplit per split."""
  grid = (feature_grid(settings.model_dir) if settings.inputs == FEATURES
          else None)
  for split in splits:
    _ = pipeline | f"Caption[{split.name}]" >> CaptionSplit(
        split.name, settings, out, records=split.records,
        cache_files=split.cache_files, grid=grid, max_pixels=max_pixels,
        total=split.total)


def clear_partial_output(out: str) -> None:
  """Removes what an interrupted run left (there is no summary.json)."""
  for name in (SHARDS_DIR, DEAD_LETTERS_DIR, feature_cache.COUNTS_DIR):
    path = FileSystems.join(out, name)
    if FileSystems.exists(path):
      FileSystems.delete([path])


class IncompleteResultsError(RuntimeError):
  """The caption shards hold other images than the job counted."""


def _lines(folder: str) -> Iterable[Dict[str, Any]]:
  match = FileSystems.match([FileSystems.join(folder, "*")])[0]
  for metadata in sorted(match.metadata_list, key=lambda m: m.path):
    for line in readers.read_bytes(metadata.path).decode().splitlines():
      if line.strip():
        yield json.loads(line)


def write_outputs(out: str, summary: Mapping[str, Mapping[str, Any]]
                  ) -> Dict[str, Any]:
  """Merges the caption shards into captions.jsonl, results.json and (when
  there are references) references.json, sorted by image id; removes the
  shards. Returns {"captions", "results", "references" (path or None),
  "images"}. Raises IncompleteResultsError if the shards do not hold one
  line for every captioned image, each id once."""
  shards = FileSystems.join(out, SHARDS_DIR)
  lines = sorted(_lines(shards), key=lambda line: line["image_id"])
  counted = sum(counts[PROCESSED] for counts in summary.values())
  ids = [line["image_id"] for line in lines]
  if len(lines) != counted or len(set(ids)) != len(ids):
    raise IncompleteResultsError(
        f"{counted} images captioned but the caption shards hold "
        f"{len(lines)} lines for {len(set(ids))} image ids; run again")

  def write(name, text):
    with FileSystems.create(FileSystems.join(out, name)) as f:
      f.write(text.encode("utf-8"))

  write(CAPTIONS_FILE, "".join(json.dumps(line, sort_keys=True) + "\n"
                               for line in lines))
  write(RESULTS_FILE, json.dumps(
      [{"image_id": line["image_id"], "caption": line["caption"]}
       for line in lines], indent=1) + "\n")
  references = None
  if any(line.get("references") for line in lines):
    coco = {"images": [], "annotations": []}
    for line in lines:
      coco["images"].append({"id": line["image_id"],
                             "file_name": line["file_name"]})
      for caption in line.get("references", []):
        coco["annotations"].append({"id": len(coco["annotations"]) + 1,
                                    "image_id": line["image_id"],
                                    "caption": caption})
    write(REFERENCES_FILE, json.dumps(coco) + "\n")
    references = FileSystems.join(out, REFERENCES_FILE)
  if FileSystems.exists(shards):
    FileSystems.delete([shards])
  return {"captions": FileSystems.join(out, CAPTIONS_FILE),
          "results": FileSystems.join(out, RESULTS_FILE),
          "references": references, "images": len(lines)}
