"""ImageCaptionExampleGen: a captioning dataset -> cached image features.

A FileBasedExampleGen (input splits are annotation files under `input_base`,
so TFX's span and fingerprint logic and the Vertex driver keep working)
whose executor runs the feature-caching Beam job of
ingest/feature_cache.py for every split. The executor writes the splits
itself, rather than through the base class's writer, so that shards are
deterministic; everything else about the artifact is standard (split names,
payload format tf.Example, GZIP TFRecords under `Split-<name>/`).

Next to the splits it keeps:
  extractor/extractor.weights.h5, extractor.json  the network every worker used
  dead_letters/<split>-*.jsonl                    skipped images and captions
  summary.json                                    processed / skipped by reason
and the counts as custom properties (`train_processed`, `train_skipped`).
"""

import json
import os
from typing import Any, Dict, Mapping

from absl import logging
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from google.protobuf import struct_pb2

from core import extractors
from core import features
from ingest import feature_cache
from ingest import readers


def _custom_config(exec_properties: Mapping[str, Any]) -> Dict[str, Any]:
  config = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(exec_properties["custom_config"], config)
  struct = struct_pb2.Struct()
  config.custom_config.Unpack(struct)
  return json.loads(proto_utils.proto_to_json(struct))


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """Prepares the extractor once, runs the Beam job, writes the summary."""

  def GetInputSourceToExamplePTransform(self):
    raise NotImplementedError("Executor.Do writes the splits itself")

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    examples = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.EXAMPLES_KEY])
    config = _custom_config(exec_properties)
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
        input_config)
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    names = [split.name for split in input_config.splits]
    examples.split_names = artifact_utils.encode_split_names(names)

    sources = {
        split.name: feature_cache.split_source(
            config["dataset"], input_base, split.pattern,
            config["splits"][split.name])
        for split in input_config.splits}
    feature_cache.check_inputs(sources, "input_base", input_base)
    split_dirs = {name: artifact_utils.get_split_uri([examples], name)
                  for name in names}
    with feature_cache.prepared_extractor(config, examples.uri) as settings:
      with self._make_beam_pipeline() as pipeline:
        feature_cache.cache_splits(pipeline, sources, settings, split_dirs,
                                   examples.uri)

    examples_utils.set_payload_format(
        examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(examples, "tfrecords_gzip")
    summary = feature_cache.collect_summary(examples.uri)
    feature_cache.write_json(os.path.join(examples.uri,
                                          feature_cache.SUMMARY_FILE), summary)
    for split, counts in summary.items():
      examples.set_int_custom_property(f"{split}_processed",
                                       counts["processed"])
      examples.set_int_custom_property(f"{split}_skipped",
                                       sum(counts["skipped"].values()))
    for line in feature_cache.summary_lines(summary):
      logging.info("ImageCaptionExampleGen %s", line)
      print(f"ImageCaptionExampleGen {line}", flush=True)
    # After the summary: what was skipped stays on record for the user.
    feature_cache.check_nonempty(summary, sources)
    feature_cache.check_complete(summary)


class ImageCaptionExampleGen(FileBasedExampleGen):
  """Caches image features and captions of a captioning dataset.

  Args:
    input_base: the dataset folder (local or gs://).
    dataset: coco2017, coco2014, coco (any COCO-format file), flickr8k or
      karpathy (see ingest/readers.py).
    splits: split name -> {"annotations": file, "images": folder, "subset":
      which images}, paths relative to `input_base`, e.g. {"train":
      {"annotations": "annotations/captions_train2017.json", "images":
      "train2017"}, "eval": {...}}. `subset` is "" (all), Karpathy split names
      ("train+restval"), a Flickr8k split list file, or "hash:A-B".
    extractor: inception_v3, mobilenet, mobilenet_v2, mobilenet_v3_small,
      mobilenet_v3_large, patches.
    alpha: width multiplier of mobilenet / mobilenet_v2.
    weights: "imagenet", a Keras weights file, or "none".
    batch_size: images per RunInference batch.
    feature_dtype: float16 (default) or float32.
    max_pixels: images with more pixels are skipped (decompression bombs).
    code_fingerprint, weights_checksum: of the code this component runs and
      of the weights file (pipeline/fingerprint.py); only TFX's cache key
      reads them.
  """

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

  def __init__(self, input_base: str,
               splits: Mapping[str, Mapping[str, str]],
               dataset: str = "coco",
               extractor: str = "patches", weights: str = "none",
               batch_size: int = 16,
               feature_dtype: str = features.DEFAULT_FEATURE_DTYPE,
               patch_image_size: int = 128, patch_size: int = 16,
               max_pixels: int = features.MAX_PIXELS, alpha: float = 1.0,
               code_fingerprint: str = "", weights_checksum: str = ""):
    extractors.extractor_spec(extractor, patch_image_size, patch_size, alpha)
    readers.Source(dataset, "", "")  # validates the name
    if feature_dtype not in features.FEATURE_DTYPES:
      raise ValueError(f"feature_dtype must be one of {features.FEATURE_DTYPES}"
                       f", got {feature_dtype!r}")
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=name, pattern=split["annotations"])
        for name, split in splits.items()])
    struct = struct_pb2.Struct()
    struct.update({
        "dataset": dataset,
        "splits": {name: {"images": split["images"],
                          "subset": split.get("subset", "")}
                   for name, split in splits.items()},
        "extractor": extractor, "weights": weights, "batch_size": batch_size,
        "feature_dtype": feature_dtype, "patch_image_size": patch_image_size,
        "patch_size": patch_size, "max_pixels": max_pixels,
        "alpha": alpha, "code_fingerprint": code_fingerprint,
        "weights_checksum": weights_checksum})
    custom_config = example_gen_pb2.CustomConfig()
    custom_config.custom_config.Pack(struct)
    super().__init__(input_base=input_base, input_config=input_config,
                     custom_config=custom_config)
