"""Runs the pipeline locally with LocalDagRunner and Beam's DirectRunner.

  python pipeline/local_runner.py                 # configs/local.yaml
  CAPTIONER_CONFIG=configs/my.yaml python pipeline/local_runner.py
  tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
  tfx run create --engine local --pipeline_name image-captioning-local
"""

import os
import sys

# Run as a script, Python puts this folder first on sys.path, where
# `pipeline.py` would shadow the `pipeline` package: use the repo root.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
  sys.path[0] = os.path.dirname(_HERE)

from absl import logging  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

from captioner import config as config_lib  # pylint: disable=g-import-not-at-top
from pipeline import pipeline  # pylint: disable=g-import-not-at-top


def create_local_pipeline(config: config_lib.PipelineConfig) -> tfx.dsl.Pipeline:
  metadata_path = config.resolve(config.metadata_path)
  os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
  return pipeline.create_pipeline(
      config,
      pipeline_root=config.resolve(config.pipeline_root),
      data_root=config.resolve(config.data.root),
      serving_dir=config.resolve(config.serving_dir),
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
              metadata_path)),
      beam_pipeline_args=list(config.beam.args))


def run(config: config_lib.PipelineConfig) -> None:
  tfx.orchestration.LocalDagRunner().run(create_local_pipeline(config))


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  run(config_lib.load())
