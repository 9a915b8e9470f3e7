"""Real Transform outputs of a tiny dataset, in seconds rather than a
pipeline run's minutes: generated raw tf.Examples (ExampleGen's format,
feature_cache.to_example) in a few shard files per split, then TFX's own
Transform executor (the component's Beam pipeline, with the local
pipeline's Beam options: the FnApiRunner) with the project's
preprocessing_fn and the curated schema.

What the Trainer then reads is exactly what a pipeline's Transform writes:
transformed_examples/Split-{train,eval}/*.gz, the transform graph with its
vocabulary asset, the schema folder.
"""

import os
import shutil

import numpy as np
import tensorflow as tf

# A small grid; FEATURES is the Trainer's `features` section that makes it
# (the patches extractor: (32 / 16)^2 patches of 16 * 16 * 3 values).
GRID = (2, 2, 768)
FEATURES = {"extractor": "patches", "weights": "none", "dtype": "float16",
            "patch_image_size": 32, "patch_size": 16}
WORDS = ("a red blue green circle square triangle on the left right of "
         "big small picture").split()


def _records(rng, count, first_id):
  for i in range(count):
    captions = [" ".join(rng.choice(WORDS, size=rng.integers(3, 8)))
                for _ in range(rng.integers(1, 4))]
    yield {"image_id": first_id + i, "file_name": f"{first_id + i}.jpg",
           "path": f"/nowhere/{first_id + i}.jpg", "captions": captions}


def _write_split(folder, rng, count, first_id, shards):
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  os.makedirs(folder)
  writers = [tf.io.TFRecordWriter(
      os.path.join(folder, f"data_tfrecord-{s:05d}-of-{shards:05d}.gz"),
      options="GZIP") for s in range(shards)]
  for i, record in enumerate(_records(rng, count, first_id)):
    grid = rng.normal(size=GRID).astype("float32")
    writers[i % shards].write(feature_cache.to_example(
        record, grid, FEATURES["dtype"]).SerializeToString())
  for writer in writers:
    writer.close()


def _artifact(cls, uri, splits=None):
  from tfx.types import artifact_utils  # pylint: disable=g-import-not-at-top
  artifact = cls()
  artifact.uri = uri
  if splits:
    artifact.split_names = artifact_utils.encode_split_names(list(splits))
  return artifact


def make(root, train_images=48, eval_images=8, shards=2, seed=0):
  """Writes raw examples and runs TFX's Transform executor under `root`;
  returns the artifact folders {"transformed_examples", "transform_graph",
  "schema"} as trainer/standalone.py takes them."""
  from pipeline import local  # pylint: disable=g-import-not-at-top
  from pipeline import validation  # pylint: disable=g-import-not-at-top
  from tfx.components.transform import executor  # pylint: disable=g-import-not-at-top
  from tfx.proto import transform_pb2  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_component_specs as specs  # pylint: disable=g-import-not-at-top
  from tfx.utils import proto_utils  # pylint: disable=g-import-not-at-top

  root = str(root)
  rng = np.random.default_rng(seed)
  examples = os.path.join(root, "examples")
  _write_split(os.path.join(examples, "Split-train"), rng, train_images, 1,
               shards)
  _write_split(os.path.join(examples, "Split-eval"), rng, eval_images,
               100000, shards)
  schema = os.path.join(root, "schema")
  os.makedirs(schema)
  shutil.copy(validation.SCHEMA_FILE, os.path.join(schema, "schema.pbtxt"))
  folders = {"transformed_examples": os.path.join(root, "transformed"),
             "transform_graph": os.path.join(root, "transform_graph"),
             "schema": schema}
  # The local pipeline's Beam options: its runner (no Prism attempt) and
  # nothing for TFX to build for the workers.
  context = executor.Executor.Context(
      beam_pipeline_args=local.local_beam_args([]))
  executor.Executor(context).Do(
      {specs.EXAMPLES_KEY: [_artifact(standard_artifacts.Examples, examples,
                                      ("train", "eval"))],
       specs.SCHEMA_KEY: [_artifact(standard_artifacts.Schema, schema)]},
      {specs.TRANSFORM_GRAPH_KEY: [_artifact(
          standard_artifacts.TransformGraph, folders["transform_graph"])],
       specs.TRANSFORMED_EXAMPLES_KEY: [_artifact(
           standard_artifacts.Examples, folders["transformed_examples"])],
       executor.TEMP_PATH_KEY: [_artifact(
           standard_artifacts.TransformCache, os.path.join(root, "tmp"))]},
      {specs.PREPROCESSING_FN_KEY: "trainer.preprocessing.preprocessing_fn",
       specs.SPLITS_CONFIG_KEY: proto_utils.proto_to_json(
           transform_pb2.SplitsConfig(analyze=["train"],
                                      transform=["train", "eval"])),
       specs.DISABLE_STATISTICS_KEY: 1,
       specs.CUSTOM_CONFIG_KEY: "{}"})
  return folders
