"""Tests for pipeline/validation.py on statistics TFDV computes for real.

Small batches of tf.Examples shaped like ImageCaptionExampleGen's go through
TFDV's statistics (in memory, decoded as TFXIO decodes them); the schema is
inferred from the clean train and eval splits as SchemaGen does
(infer_feature_shape=False); each split is validated against it as
ExampleValidator does; both artifacts are laid out as the local runner
writes them under a pipeline root.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tfx_bsl.coders import example_coder

from pipeline import validation

GRID = (2, 2, 3)


def _example(i, captions=True, features=None, shape=GRID):
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
}


def _statistics(examples):
  """What StatisticsGen computes, in memory (no Beam pipeline)."""
  batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(examples)
  return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions())


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
  statistics = _write_statistics(
      root / "StatisticsGen" / "statistics" / "3", SPLITS)
  schema = tfdv.infer_schema(statistics["train"], infer_feature_shape=False)
  schema = tfdv.update_schema(schema, statistics["eval"],
                              infer_feature_shape=False)
  _write_anomalies(root / "ExampleValidator" / "anomalies" / "5", statistics,
                   schema)
  # An older run, which must not be read.
  old = root / "ExampleValidator" / "anomalies" / "2" / "Split-eval"
  old.mkdir(parents=True)
  (old / validation.ANOMALIES_FILE).write_bytes(tfdv.validate_statistics(
      statistics["nocaptions"], schema).SerializeToString())
  return root


def _features(anomalies, stops=None):
  return {(a.feature, a.short_description) for a in anomalies
          if stops is None or a.stops == stops}


def test_example_validator_anomalies_of_the_newest_run(root):
  found = validation.latest_anomalies(str(root))
  assert sorted(found) == sorted(SPLITS)
  assert found["train"] == [] and found["eval"] == []
  assert ("captions", "Column dropped") in _features(found["nocaptions"])
  assert all(a.severity == "ERROR" and not a.stops
             for a in found["nocaptions"])
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
  assert ("captions", "Column dropped") in _features(
      result.anomalies["nocaptions"], stops=True)
  assert _features(result.anomalies["emptyfeatures"]) == {
      ("image_features", "Unexpected feature size")}
  assert _features(result.anomalies["othershape"], stops=True) == {
      ("image_features", "Unexpected feature size"),
      ("image_features_shape", "Unexpected feature shape")}
  assert result.lines[-1].startswith("[validate] FAILED: ")
  line = next(l for l in result.lines
              if l.startswith("[validate] emptyfeatures: image_features: "))
  assert "0 bytes per image on average" in line
  assert line.endswith("(ERROR, breaks the data contract)")


def test_clean_data_has_no_anomalies(root):
  statistics = validation.latest_statistics(str(root))
  clean = {s: statistics[s] for s in ("train", "eval")}
  assert validation.contract_anomalies(clean, GRID) == {"train": [],
                                                        "eval": []}
  # The same data read as a wider grid is another shape.
  wide = validation.contract_anomalies(clean, (2, 2, 6))
  assert _features(wide["eval"]) == {
      ("image_features", "Unexpected feature size"),
      ("image_features_shape", "Unexpected feature shape")}


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
