"""The pipeline on this machine: LocalDagRunner and Beam's FnApiRunner (the
DirectRunner's engine, named: ingest/local_beam.py), with paths from the
config (`local_runner.py` and `captioner run` call it)."""

import os
from typing import List

# Not through tfx.v1, which imports its Google Cloud extensions (pipeline.py).
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from core import config as config_lib
from ingest import local_beam
from pipeline import pipeline

# The Beam options that name what a job's workers must install. Without any
# of them, each TFX Beam component copies TFX and builds an sdist of it to
# ship to the workers before its job (tfx/utils/dependency_utils.py): ~2 s a
# component on a 2-core machine, four times a run.
_DEPENDENCY_OPTIONS = ("extra_packages", "setup_file", "requirements_file",
                       "sdk_container_image", "worker_harness_container_image")
# What the workers run on: the pinned packages.
LOCK_FILE = os.path.join(config_lib.REPO_ROOT, "requirements", "lock.txt")


def local_beam_args(args: List[str]) -> List[str]:
  """`args`, with `local_beam.LOCAL_RUNNER` when they name no runner, plus
  the lock as the workers' requirements when the job runs on this machine
  and `args` name no dependency.

  Local workers are this machine's processes on this very install: the
  option only tells TFX that nothing needs building, and
  `--requirements_cache=skip` keeps Beam from downloading the lock's
  packages to stage them (it copies the file alone, in milliseconds).
  `--setup_file` would tell TFX the same, but Beam then builds an sdist of
  the checkout twice per Beam component (0.4 s each; BENCHMARKS.md, "The
  README's two commands"). Another runner (LocalDagRunner can drive
  Dataflow) keeps TFX's behaviour.
  """
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  options = pipeline_options.PipelineOptions(args).get_all_options()
  runner = options.get("runner")
  if not local_beam.is_local(runner):
    return list(args)
  args = list(args) if runner else [f"--runner={local_beam.LOCAL_RUNNER}"
                                    ] + list(args)
  if any(options.get(name) for name in _DEPENDENCY_OPTIONS):
    return args
  added = [f"--requirements_file={LOCK_FILE}"]
  if not options.get("requirements_cache"):
    added.append("--requirements_cache=skip")
  return args + added


def create_local_pipeline(
    config: config_lib.PipelineConfig) -> tfx_pipeline.Pipeline:
  metadata_path = config.resolve(config.metadata_path)
  os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
  return pipeline.create_pipeline(
      config,
      pipeline_root=config.resolve(config.pipeline_root),
      data_root=config.resolve(config.data.root),
      serving_dir=config.resolve(config.serving_dir),
      metadata_connection_config=(
          metadata.sqlite_metadata_connection_config(
              metadata_path)),
      beam_pipeline_args=local_beam_args(config.beam.args))


def run(config: config_lib.PipelineConfig) -> None:
  LocalDagRunner().run(create_local_pipeline(config))
