"""Tests for the data contract: pipeline/schema.pbtxt, DataContractCheck
(components/data_contract.py) and pipeline/validation.py, on statistics TFDV
computes for real.

Small batches of tf.Examples shaped like ImageCaptionExampleGen's go through
TFDV's statistics (in memory, decoded as TFXIO decodes them, with the schema
as StatisticsGen gets it from ImportSchemaGen); each split is validated
against the curated schema as ExampleValidator does; the artifacts are laid
out as the local runner writes them under a pipeline root, and read back as
TFX artifacts by the component's own function.
"""

import os
import shutil

from google.protobuf import text_format
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import schema_utils
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx_bsl.coders import example_coder

from core import config as config_lib
from components import data_contract
from core.config import REPO_ROOT
from pipeline import pipeline
from pipeline import validation

GRID = (2, 2, 3)


def _example(i, captions=True, features=None, shape=GRID, extra=False):
  if features is None:
    features = np.full(shape, i, np.float16).tobytes()
  feature = {
      "image_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
      "file_name": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[b"%012d.jpg" % i])),
      "image_path": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[b"/data/%012d.jpg" % i])),
      "image_features": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[features])),
      "image_features_shape": tf.train.Feature(
          int64_list=tf.train.Int64List(value=list(shape))),
  }
  if captions:
    feature["captions"] = tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[b"a red circle %d" % k for k in range(1 + i % 3)]))
  if extra:
    feature["photographer"] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[b"someone"]))
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


# The broken splits reuse the train split's ids, names and captions, so that
# only what was broken differs.
SPLITS = {
    "train": [_example(i) for i in range(12)],
    "eval": [_example(i) for i in range(12, 18)],
    "nocaptions": [_example(i, captions=False) for i in range(6)],
    "emptyfeatures": [_example(i, features=b"") for i in range(6)],
    "othershape": [_example(i, shape=(3, 3, 3)) for i in range(6)],
    "newcolumn": [_example(i, extra=True) for i in range(6)],
}
BROKEN = ("nocaptions", "emptyfeatures", "othershape")


def _statistics(examples):
  """What StatisticsGen computes (with the schema), in memory."""
  batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(examples)
  return stats_impl.generate_statistics_in_memory(
      batch, tfdv.StatsOptions(schema=validation.CONTRACT))


def _write_statistics(run_dir, splits):
  statistics = {}
  for split, examples in splits.items():
    stats = _statistics(examples)
    out = run_dir / f"Split-{split}" / validation.STATISTICS_FILE
    out.parent.mkdir(parents=True)
    out.write_bytes(stats.SerializeToString())
    statistics[split] = stats
  return statistics


def _write_anomalies(run_dir, statistics, schema):
  for split, stats in statistics.items():
    out = run_dir / f"Split-{split}" / validation.ANOMALIES_FILE
    out.parent.mkdir(parents=True)
    out.write_bytes(tfdv.validate_statistics(stats, schema).SerializeToString())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("validation")
  root = tmp_path / "pipeline_root"
  # What ImportSchemaGen writes: a copy of the file.
  schema_dir = root / validation.SCHEMA_NODE_ID / "schema" / "2"
  schema_dir.mkdir(parents=True)
  shutil.copy(validation.SCHEMA_FILE, schema_dir / "schema.pbtxt")
  statistics = _write_statistics(
      root / "StatisticsGen" / "statistics" / "3", SPLITS)
  _write_anomalies(root / "ExampleValidator" / "anomalies" / "5", statistics,
                   validation.CONTRACT)
  # An older run, which must not be read.
  old = root / "ExampleValidator" / "anomalies" / "2" / "Split-eval"
  old.mkdir(parents=True)
  (old / validation.ANOMALIES_FILE).write_bytes(tfdv.validate_statistics(
      statistics["nocaptions"], validation.CONTRACT).SerializeToString())
  return root


def _features(anomalies, stops=None):
  return {(a.feature, a.short_description) for a in anomalies
          if stops is None or a.stops == stops}


def _artifacts(root, splits):
  """The run's three artifacts as TFX passes them to DataContractCheck,
  with only `splits`."""
  names = artifact_utils.encode_split_names(list(splits))
  statistics = tfx.types.standard_artifacts.ExampleStatistics()
  statistics.uri = str(root / "StatisticsGen" / "statistics" / "3")
  statistics.split_names = names
  anomalies = tfx.types.standard_artifacts.ExampleAnomalies()
  anomalies.uri = str(root / "ExampleValidator" / "anomalies" / "5")
  anomalies.split_names = names
  schema = tfx.types.standard_artifacts.Schema()
  schema.uri = str(root / validation.SCHEMA_NODE_ID / "schema" / "2")
  return {"statistics": statistics, "anomalies": anomalies,
          "schema": schema}


def test_the_schema_file_is_the_contract_transform_parses():
  schema = schema_pb2.Schema()
  with open(validation.SCHEMA_FILE) as f:
    text_format.Parse(f.read(), schema)
  assert validation.CONTRACT == schema
  features = {f.name: f for f in schema.feature}
  assert {n: schema_pb2.FeatureType.Name(f.type)
          for n, f in features.items()} == {
              "image_id": "INT", "file_name": "BYTES", "image_path": "BYTES",
              "image_features": "BYTES", "image_features_shape": "INT",
              "captions": "BYTES"}
  assert all(f.presence.min_fraction == 1.0 for f in features.values())
  shape = features["image_features_shape"].value_count
  assert (shape.min, shape.max) == (3, 3)
  assert features["captions"].value_count.min == 1
  assert schema.dataset_constraints.min_examples_count == 1
  # Transform parses the raw examples with it: every feature variable-length,
  # as preprocessing_fn expects (it also takes dense or ragged ones).
  spec = schema_utils.schema_as_feature_spec(schema).feature_spec
  assert spec == {
      "image_id": tf.io.VarLenFeature(tf.int64),
      "file_name": tf.io.VarLenFeature(tf.string),
      "image_path": tf.io.VarLenFeature(tf.string),
      "image_features": tf.io.VarLenFeature(tf.string),
      "image_features_shape": tf.io.VarLenFeature(tf.int64),
      "captions": tf.io.VarLenFeature(tf.string)}


def test_the_image_schema_file_is_where_the_dockerfile_copies_it():
  with open(os.path.join(REPO_ROOT, "Dockerfile")) as f:
    workdir, = {line.split()[1] for line in f if line.startswith("WORKDIR ")}
  assert pipeline.IMAGE_SCHEMA_FILE == os.path.join(
      workdir, os.path.relpath(validation.SCHEMA_FILE, REPO_ROOT))
  # The image copies the whole context but what .dockerignore names; the
  # root-relative pattern `schema.pbtxt` there does not match pipeline/'s.
  with open(os.path.join(REPO_ROOT, ".dockerignore")) as f:
    patterns = {line.strip() for line in f if line.strip()}
  assert not patterns & {"pipeline", "pipeline/schema.pbtxt",
                         "**/schema.pbtxt", "*.pbtxt", "**/*.pbtxt"}


def test_example_validator_anomalies_of_the_newest_run(root):
  found = validation.latest_anomalies(str(root))
  assert sorted(found) == sorted(SPLITS)
  assert found["train"] == [] and found["eval"] == []
  assert _features(found["nocaptions"]) == {("captions", "Column dropped")}
  assert all(a.severity == "ERROR" and a.stops for a in found["nocaptions"])
  # A feature the schema does not name: shown, not a breach.
  assert [(a.feature, a.short_description, a.stops)
          for a in found["newcolumn"]] == [("photographer", "New column",
                                            False)]
  # What a schema cannot state, TFDV does not see: empty bytes, or a grid of
  # another size with as many dimensions.
  assert found["emptyfeatures"] == [] and found["othershape"] == []
  assert validation.latest_anomalies(str(root / "nowhere")) is None


@pytest.mark.parametrize("grid", [GRID, None])
def test_the_contract_stops_missing_captions_empty_features_other_shapes(
    root, grid):
  result = validation.check_run(str(root), grid=grid, dtype="float16")
  assert result.stop
  assert result.anomalies["train"] == [] and result.anomalies["eval"] == []
  assert "[validate] eval: no anomalies" in result.lines
  assert "[validate] train: no anomalies" in result.lines
  assert _features(result.anomalies["nocaptions"], stops=True) == {
      ("captions", "Column dropped")}
  assert _features(result.anomalies["emptyfeatures"]) == {
      ("image_features", "Unexpected feature size")}
  assert _features(result.anomalies["othershape"], stops=True) == {
      ("image_features", "Unexpected feature size"),
      ("image_features_shape", "Unexpected feature shape")}
  assert _features(result.anomalies["newcolumn"], stops=False) == {
      ("photographer", "New column")}
  assert result.lines[-1].startswith("[validate] FAILED: ")
  assert "DataContractCheck" in result.lines[-1]
  line = next(l for l in result.lines
              if l.startswith("[validate] emptyfeatures: image_features: "))
  assert "0 bytes per image on average" in line
  assert line.endswith("(ERROR, breaks the data contract)")
  line = next(l for l in result.lines
              if l.startswith("[validate] newcolumn: photographer: "))
  assert line.endswith("(ERROR)")


def test_clean_data_has_no_anomalies(root):
  statistics = validation.latest_statistics(str(root))
  clean = {s: statistics[s] for s in ("train", "eval")}
  assert validation.contract_anomalies(clean, GRID) == {"train": [],
                                                        "eval": []}
  # The same data read as a wider grid, or as float32, is another size.
  wide = validation.contract_anomalies(clean, (2, 2, 6))
  assert _features(wide["eval"]) == {
      ("image_features", "Unexpected feature size"),
      ("image_features_shape", "Unexpected feature shape")}
  assert _features(validation.contract_anomalies(
      clean, GRID, "float32")["train"]) == {
          ("image_features", "Unexpected feature size")}


def test_the_component_passes_clean_splits_and_shows_other_anomalies(root):
  assert data_contract.DataContractCheck.test_call(
      **_artifacts(root, ["train", "eval", "newcolumn"]),
      grid="2x2x3", dtype="float16") is None


@pytest.mark.parametrize("split,expected", [
    ("nocaptions", "nocaptions: captions: Column dropped: Column is "
     "completely missing; the schema expects BYTES, in every example, at "
     "least 1 value (ERROR, breaks the data contract)"),
    ("emptyfeatures", "emptyfeatures: image_features: Unexpected feature "
     "size: 0 bytes per image on average, the 2x2x3 grid of float16 has 24 "
     "(ERROR, breaks the data contract)"),
    ("othershape", "othershape: image_features_shape: Unexpected feature "
     "shape: shape values 3..3 (mean 3), the 2x2x3 grid has 2..3 (mean "
     "2.333)"),
])
def test_the_component_fails_on_a_broken_split(root, split, expected):
  with pytest.raises(data_contract.DataContractError) as raised:
    data_contract.DataContractCheck.test_call(
        **_artifacts(root, ["train", split]), grid="2x2x3", dtype="float16")
  message = str(raised.value)
  assert expected in message
  assert "Transform, the Trainer and the Pusher do not run" in message
  assert "the 2x2x3 grid of float16" in message
  assert "train:" not in message  # only the broken split is named


def test_the_component_fails_when_the_configured_grid_differs(root):
  with pytest.raises(data_contract.DataContractError,
                     match="train: image_features: Unexpected feature size: "
                     "24 bytes per image on average, the 2x2x6 grid of "
                     "float16 has 48"):
    data_contract.DataContractCheck.test_call(
        **_artifacts(root, ["train", "eval"]), grid="2x2x6", dtype="float16")
  with pytest.raises(ValueError, match="is not HxWxC"):
    data_contract.parse_grid("2x2")


def test_format_lines():
  anomaly = validation.Anomaly("image_features", "Missing values",
                               "Some examples have fewer values than "
                               "expected.", "ERROR")
  assert validation.format_lines({"train": [anomaly], "eval": []}) == [
      "[validate] eval: no anomalies",
      "[validate] train: image_features: Missing values: Some examples have "
      "fewer values than expected. (ERROR)"]


def test_old_artifacts_are_ignored_with_not_before(root):
  result = validation.check_run(str(root), GRID,
                                not_before=os.path.getmtime(root) + 3600)
  assert not result.stop and result.anomalies == {}
  assert result.lines == [
      f"[validate] no ExampleValidator output under {root}",
      f"[validate] no StatisticsGen output under {root}"]


def test_check_config_run_uses_the_configured_grid_and_dtype(root):
  config = config_lib.load(config_lib.DEFAULT_CONFIG, overrides={
      "pipeline_root": str(root),
      "features": {"extractor": "patches", "patch_image_size": 2,
                   "patch_size": 1, "dtype": "float16"}})
  assert validation.feature_grid(config.features) == GRID
  result = validation.check_config_run(config)
  assert result.anomalies["train"] == [] and result.stop
  assert "the 2x2x3 grid of float16" in result.lines[-1]
