"""ImageCaptionExampleGen: COCO-format captions + images -> cached features.

A FileBasedExampleGen whose Beam job, per split, reads the annotation file,
joins captions with image files, decodes and resizes each image, runs the
feature extractor through RunInference (one model per worker, batched) and
writes one tf.Example per image:

  image_id              int64
  file_name             bytes
  image_features        bytes   the (h, w, c) feature grid, float16 (default)
  image_features_shape  int64   [h, w, c]
  captions              bytes   every reference caption

An image that is missing or cannot be decoded, or that has no usable caption,
never stops the job: it is counted (a Beam counter per reason), written to
`<examples>/dead_letters/<split>-*.jsonl` with its id, path and reason, and a
summary (processed, skipped by reason) is logged and kept as
`<examples>/summary.json` and as custom properties of the artifact.
"""

import collections
import json
import os
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from absl import logging
import apache_beam as beam
from apache_beam.ml.inference import base as inference
import numpy as np
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.utils import proto_utils

from google.protobuf import struct_pb2

from components import extractors

COUNTER_NAMESPACE = "ImageCaptionExampleGen"
DEAD_LETTERS_DIR = "dead_letters"
EXTRACTOR_DIR = "extractor"
SUMMARY_FILE = "summary.json"
_STATS_DIR = "_split_stats"

# Reasons an image is skipped (each is also a Beam counter name).
MISSING_FILE = "missing_file"
UNDECODABLE = "undecodable_image"
NO_CAPTIONS = "no_captions"


# ----------------------------------------------------------------------------
# Reading annotations.


def read_coco_captions(annotations_path: str, images_dir: str
                       ) -> Iterable[Dict[str, Any]]:
  """One record per image of a COCO captions file: id, path and captions."""
  with tf.io.gfile.GFile(annotations_path, "rb") as f:
    coco = json.load(f)
  captions = collections.defaultdict(list)
  for annotation in coco["annotations"]:
    captions[annotation["image_id"]].append(annotation.get("caption", ""))
  for image in coco["images"]:
    yield {
        "image_id": int(image["id"]),
        "file_name": image["file_name"],
        "path": os.path.join(images_dir, image["file_name"]),
        "captions": captions.get(image["id"], []),
    }


def _dead_letter(record: Mapping[str, Any], reason: str, detail: str = ""):
  beam.metrics.Metrics.counter(COUNTER_NAMESPACE, f"skipped_{reason}").inc()
  return beam.pvalue.TaggedOutput("dead_letters", {
      "image_id": record["image_id"], "path": record["path"],
      "reason": reason, "detail": detail[:500]})


class DecodeImage(beam.DoFn):
  """Record -> (record, float32 image [S, S, 3]) or a dead letter."""

  def __init__(self, image_size: int):
    self._image_size = image_size

  def process(self, record):
    captions = [c.strip() for c in record["captions"]
                if isinstance(c, str) and c.strip()]
    if not captions:
      yield _dead_letter(record, NO_CAPTIONS)
      return
    record = {**record, "captions": captions}
    try:
      with tf.io.gfile.GFile(record["path"], "rb") as f:
        image_bytes = f.read()
    except tf.errors.NotFoundError as e:
      yield _dead_letter(record, MISSING_FILE, str(e))
      return
    try:
      image = extractors.load_image(image_bytes, self._image_size).numpy()
    except (tf.errors.InvalidArgumentError, ValueError) as e:
      yield _dead_letter(record, UNDECODABLE, str(e).splitlines()[0])
      return
    yield record, image


# ----------------------------------------------------------------------------
# Feature extraction with RunInference.


class ExtractorModelHandler(inference.ModelHandler):
  """Builds the Keras extractor once per worker and runs it on batches."""

  def __init__(self, extractor: str, weights_path: Optional[str],
               batch_size: int, patch_image_size: int, patch_size: int):
    self._extractor = extractor
    self._weights_path = weights_path
    self._batch_size = batch_size
    self._patch_image_size = patch_image_size
    self._patch_size = patch_size

  def load_model(self):
    spec = extractors.extractor_spec(self._extractor, self._patch_image_size,
                                     self._patch_size)
    return extractors.build_extractor(
        spec, self._weights_path or extractors.WEIGHTS_NONE, self._patch_size)

  def run_inference(self, batch, model, inference_args=None):
    features = model(np.stack(batch), training=False).numpy()
    return [inference.PredictionResult(image, grid)
            for image, grid in zip(batch, features)]

  def batch_elements_kwargs(self):
    return {"min_batch_size": 1, "max_batch_size": self._batch_size}


def to_example(record: Mapping[str, Any], features: np.ndarray,
               dtype: str) -> tf.train.Example:
  grid = features.astype(dtype)

  def bytes_feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

  def int_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

  return tf.train.Example(features=tf.train.Features(feature={
      "image_id": int_feature([record["image_id"]]),
      "file_name": bytes_feature([record["file_name"].encode("utf-8")]),
      "image_features": bytes_feature([grid.tobytes()]),
      "image_features_shape": int_feature(list(grid.shape)),
      "captions": bytes_feature([c.encode("utf-8")
                                 for c in record["captions"]]),
  }))


def _custom_config(exec_properties: Mapping[str, Any]) -> Dict[str, Any]:
  config = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(exec_properties["custom_config"], config)
  struct = struct_pb2.Struct()
  config.custom_config.Unpack(struct)
  return json.loads(proto_utils.proto_to_json(struct))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ImagesToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                     split_pattern: str) -> beam.pvalue.PCollection:
  """Annotations file (the split pattern) -> tf.Examples with features."""
  config = _custom_config(exec_properties)
  split = config["splits"][split_pattern]
  input_base = exec_properties["input_base"]
  spec = extractors.extractor_spec(config["extractor"],
                                   int(config["patch_image_size"]),
                                   int(config["patch_size"]))
  handler = inference.KeyedModelHandler(ExtractorModelHandler(
      config["extractor"], exec_properties.get("_extractor_weights"),
      int(config["batch_size"]), int(config["patch_image_size"]),
      int(config["patch_size"])))
  dtype = config["feature_dtype"]

  decoded = (
      pipeline
      | "Annotations" >> beam.Create([os.path.join(input_base, split_pattern)])
      | "ReadCaptions" >> beam.FlatMap(
          read_coco_captions, os.path.join(input_base, split["images"]))
      | "Reshuffle" >> beam.Reshuffle()
      | "DecodeImages" >> beam.ParDo(DecodeImage(spec.image_size)).with_outputs(
          "dead_letters", main="images"))
  examples = (
      decoded.images
      | "KeyByRecord" >> beam.Map(lambda pair: (json.dumps(pair[0]), pair[1]))
      | "ExtractFeatures" >> inference.RunInference(handler)
      | "ToExample" >> beam.MapTuple(
          lambda key, result: to_example(json.loads(key), result.inference,
                                         dtype)))

  # Dead letters and per-split counts, read back by the executor's summary.
  out_dir = exec_properties["_examples_uri"]
  name = split["name"]
  _ = (decoded.dead_letters
       | "DeadLetterJson" >> beam.Map(json.dumps, sort_keys=True)
       | "WriteDeadLetters" >> beam.io.WriteToText(
           os.path.join(out_dir, DEAD_LETTERS_DIR, name), ".jsonl"))
  counts = [
      examples | "CountProcessed" >> beam.combiners.Count.Globally()
      | "ProcessedKey" >> beam.Map(lambda n: ("processed", n)),
      decoded.dead_letters | "Reasons" >> beam.Map(lambda d: d["reason"])
      | "CountSkipped" >> beam.combiners.Count.PerElement(),
  ]
  _ = (counts | "AllCounts" >> beam.Flatten()
       | "CountJson" >> beam.MapTuple(lambda k, n: json.dumps([k, n]))
       | "WriteCounts" >> beam.io.WriteToText(
           os.path.join(out_dir, _STATS_DIR, name), ".jsonl"))
  return examples


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """Prepares the extractor once, runs the Beam job, writes the summary."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _ImagesToExample

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    examples = artifact_utils.get_single_instance(output_dict["examples"])
    config = _custom_config(exec_properties)
    spec = extractors.extractor_spec(config["extractor"],
                                     int(config["patch_image_size"]),
                                     int(config["patch_size"]))
    # Build (and, for imagenet, download) the extractor here, once, so a bad
    # weights setting fails before any worker starts; workers load the saved
    # weights, so every worker and the exported model use the same network.
    model = extractors.build_extractor(spec, config["weights"],
                                       int(config["patch_size"]))
    weights_path = extractors.save_extractor_weights(
        model, os.path.join(examples.uri, EXTRACTOR_DIR))
    exec_properties = dict(exec_properties)
    exec_properties["_extractor_weights"] = weights_path
    exec_properties["_examples_uri"] = examples.uri
    _write_json(os.path.join(examples.uri, EXTRACTOR_DIR, "extractor.json"), {
        "extractor": spec.name, "image_size": spec.image_size,
        "grid": list(spec.grid), "weights": config["weights"],
        "weights_file": os.path.basename(weights_path) if weights_path else None,
        "patch_size": int(config["patch_size"]),
        "feature_dtype": config["feature_dtype"]})

    super().Do(input_dict, output_dict, exec_properties)

    summary = _collect_summary(examples.uri)
    _write_json(os.path.join(examples.uri, SUMMARY_FILE), summary)
    for split, counts in summary.items():
      examples.set_int_custom_property(f"{split}_processed",
                                       counts["processed"])
      examples.set_int_custom_property(f"{split}_skipped",
                                       sum(counts["skipped"].values()))
      message = (f"ImageCaptionExampleGen [{split}]: {counts['processed']} "
                 f"images processed, {sum(counts['skipped'].values())} skipped"
                 + "".join(f", {n} {reason}"
                           for reason, n in sorted(counts["skipped"].items())))
      logging.info(message)
      print(message, flush=True)


def _write_json(path: str, value: Any) -> None:
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)


def _collect_summary(uri: str) -> Dict[str, Dict[str, Any]]:
  summary = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(uri, _STATS_DIR, "*"))):
    split = os.path.basename(path).split("-")[0]
    counts = summary.setdefault(split, {"processed": 0, "skipped": {}})
    with tf.io.gfile.GFile(path) as f:
      for line in f:
        key, n = json.loads(line)
        if key == "processed":
          counts["processed"] += n
        else:
          counts["skipped"][key] = counts["skipped"].get(key, 0) + n
  tf.io.gfile.rmtree(os.path.join(uri, _STATS_DIR))
  return summary


class ImageCaptionExampleGen(FileBasedExampleGen):
  """Caches image features and captions of a COCO-format dataset.

  Args:
    input_base: the dataset folder (local or gs://).
    splits: split name -> (annotation file, image folder), both relative to
      `input_base`, e.g. {"train": ("annotations/captions_train2017.json",
      "train2017"), "eval": (...)}.
    extractor: `mobilenet_v3_small` or `patches`.
    weights: "imagenet", a Keras weights file, or "none".
    batch_size: images per RunInference batch.
    feature_dtype: float16 (default) or float32.
  """

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

  def __init__(self, input_base: str,
               splits: Mapping[str, Tuple[str, str]],
               extractor: str = "patches", weights: str = "none",
               batch_size: int = 16, feature_dtype: str = "float16",
               patch_image_size: int = 128, patch_size: int = 16):
    extractors.extractor_spec(extractor, patch_image_size, patch_size)
    if feature_dtype not in ("float16", "float32"):
      raise ValueError(f"feature_dtype must be float16 or float32, got "
                       f"{feature_dtype!r}")
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=name, pattern=annotations)
        for name, (annotations, _) in splits.items()])
    struct = struct_pb2.Struct()
    struct.update({
        "splits": {annotations: {"name": name, "images": images}
                   for name, (annotations, images) in splits.items()},
        "extractor": extractor, "weights": weights, "batch_size": batch_size,
        "feature_dtype": feature_dtype, "patch_image_size": patch_image_size,
        "patch_size": patch_size})
    custom_config = example_gen_pb2.CustomConfig()
    custom_config.custom_config.Pack(struct)
    super().__init__(input_base=input_base, input_config=input_config,
                     custom_config=custom_config)
