"""The pipeline on this machine: LocalDagRunner and Beam's DirectRunner, with
paths from the config (`local_runner.py` and `captioner run` call it)."""

import os

from tfx import v1 as tfx

from core import config as config_lib
from pipeline import pipeline


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
