"""The data checks of pipeline/pipeline.py, run for real by LocalDagRunner.

`pipeline.data_validation()` (StatisticsGen, ImportSchemaGen of
pipeline/schema.pbtxt, ExampleValidator, DataContractCheck) over a tiny
dataset that ImportExampleGen reads; its eval split has no captions. The
run fails in DataContractCheck with the reason, and a node that waits for
the check the way Transform does (add_upstream_node) never runs.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from components import data_contract
from pipeline import local
from pipeline import pipeline
from pipeline import validation

GRID = (2, 2, 3)


@tfx.dsl.components.component
def Downstream(  # pylint: disable=invalid-name
    marker: tfx.dsl.components.Parameter[str]) -> None:
  """Stands in for Transform: leaves a file when it runs."""
  with open(marker, "w") as f:
    f.write("ran")


def _write_split(path, ids, captions):
  os.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for i in ids:
      feature = {
          "image_id": tf.train.Feature(int64_list=tf.train.Int64List(
              value=[i])),
          "file_name": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[b"%d.jpg" % i])),
          "image_path": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[b"/data/%d.jpg" % i])),
          "image_features": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[np.full(GRID, i, np.float16).tobytes()])),
          "image_features_shape": tf.train.Feature(
              int64_list=tf.train.Int64List(value=list(GRID))),
      }
      if captions:
        feature["captions"] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[b"a red circle"]))
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())


def test_a_split_without_captions_stops_the_run_before_transform(tmp_path):
  data = tmp_path / "data"
  _write_split(str(data / "train" / "part.tfrecord"), range(8), True)
  _write_split(str(data / "eval" / "part.tfrecord"), range(8, 12), False)
  example_gen = tfx.components.ImportExampleGen(
      input_base=str(data),
      input_config=tfx.proto.Input(splits=[
          tfx.proto.Input.Split(name="train", pattern="train/*"),
          tfx.proto.Input.Split(name="eval", pattern="eval/*")]))
  nodes = pipeline.data_validation(example_gen.outputs["examples"], GRID,
                                   "float16", validation.SCHEMA_FILE)
  marker = tmp_path / "downstream_ran"
  downstream = Downstream(marker=str(marker))
  downstream.add_upstream_node(nodes[-1])
  root = tmp_path / "pipeline_root"
  test_pipeline = tfx.dsl.Pipeline(
      pipeline_name="data-contract-test", pipeline_root=str(root),
      components=[example_gen, *nodes, downstream], enable_cache=False,
      # The local pipeline's Beam options (the FnApiRunner): Beam's default
      # DirectRunner would first try to download Prism.
      beam_pipeline_args=local.local_beam_args([]),
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
              str(tmp_path / "metadata.db"))))

  with pytest.raises(data_contract.DataContractError) as raised:
    tfx.orchestration.LocalDagRunner().run(test_pipeline)
  assert ("eval: captions: Column dropped: Column is completely missing"
          in str(raised.value))
  assert "train:" not in str(raised.value)
  assert not marker.exists()

  # ExampleValidator's artifact holds the same anomaly, against the
  # curated schema; the command line's lines say why the run stopped.
  assert [(a.feature, a.short_description) for a in
          validation.latest_anomalies(str(root))["eval"]] == [
              ("captions", "Column dropped")]
  result = validation.check_run(str(root), GRID, "float16")
  assert result.stop
  assert result.lines[0] == (
      "[validate] eval: captions: Column dropped: Column is completely "
      "missing; the schema expects BYTES, in every example, at least 1 value "
      "(ERROR, breaks the data contract)")
  assert result.lines[1] == "[validate] train: no anomalies"
  assert result.lines[2].startswith("[validate] FAILED: ")
