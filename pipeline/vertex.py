"""The pipeline for Vertex AI Pipelines, built from the `vertex:` config section.

The graph is `pipeline.create_pipeline()`'s, unchanged; only arguments differ:
Dataflow options for the Beam components and a Vertex AI Training worker pool
for the Trainer. Project code is never uploaded: it is in the pipeline image
(Dockerfile), and components name it by module path.
"""

import os
from typing import Any, Dict, List, Optional

from tfx import v1 as tfx

from core import config as config_lib
from pipeline import pipeline

DEFAULT_CONFIG = os.path.join(config_lib.REPO_ROOT, "configs", "vertex.yaml")

# Keys whose paths Vertex AI, Dataflow or the training pool read: a path on
# the machine that compiles the pipeline means nothing to them.
_CLOUD_PATH_KEYS = ("pipeline_root", "data.root", "serving_dir",
                    "vertex.dataflow.temp_location")


def _value(config: config_lib.PipelineConfig, dotted_key: str) -> Any:
  value = config
  for name in dotted_key.split("."):
    value = getattr(value, name)
  return value


def check_config(config: config_lib.PipelineConfig) -> None:
  """Rejects what cannot work on Vertex AI, naming the config key."""
  for key in _CLOUD_PATH_KEYS:
    path = _value(config, key)
    if not path.startswith("gs://"):
      raise config_lib.ConfigError(
          f"config key '{key}' must be a gs:// path on Vertex AI (Google's "
          f"machines cannot read this machine's files), got {path!r}")
  for key in ("vertex.project", "vertex.region", "vertex.image"):
    if not _value(config, key):
      raise config_lib.ConfigError(f"config key '{key}' must be set to run "
                                   "on Vertex AI")
  training = config.vertex.training
  if training.replica_count < 1:
    raise config_lib.ConfigError("config key 'vertex.training.replica_count' "
                                 f"must be at least 1, got "
                                 f"{training.replica_count}")
  if training.accelerator_type and training.accelerator_count < 1:
    raise config_lib.ConfigError(
        "config key 'vertex.training.accelerator_count' must be at least 1 "
        f"with accelerator_type {training.accelerator_type!r}")


def dataflow_beam_args(config: config_lib.PipelineConfig) -> List[str]:
  """Beam arguments that send every Beam component to Dataflow."""
  vertex, dataflow = config.vertex, config.vertex.dataflow
  args = [
      "--runner=DataflowRunner",
      f"--project={vertex.project}",
      f"--region={vertex.region}",
      f"--temp_location={dataflow.temp_location}",
      f"--machine_type={dataflow.machine_type}",
      f"--max_num_workers={dataflow.max_num_workers}",
      # Workers run the pipeline image: TFX, TFDV, TFT and TFMA at the pinned
      # versions, which `pip install` of setup.py alone cannot resolve.
      f"--sdk_container_image={dataflow.sdk_container_image or vertex.image}",
      # Custom containers need Runner v2 (the default in recent Beam; explicit
      # so an older service default cannot silently drop the image).
      "--experiments=use_runner_v2",
  ]
  if dataflow.setup_file:
    args.append(f"--setup_file={dataflow.setup_file}")
  return args + list(config.beam.args)


def vertex_training_args(config: config_lib.PipelineConfig) -> Dict[str, Any]:
  """The Vertex AI CustomJob (plus its project) that runs the Trainer."""
  vertex, training = config.vertex, config.vertex.training
  machine_spec = {"machine_type": training.machine_type}
  if training.accelerator_type:
    machine_spec["accelerator_type"] = training.accelerator_type
    machine_spec["accelerator_count"] = training.accelerator_count

  def worker_pool(replica_count: int) -> Dict[str, Any]:
    # TFX replaces the container command with its run_executor entry point.
    return {"machine_spec": dict(machine_spec),
            "replica_count": replica_count,
            "container_spec": {"image_uri": vertex.image}}

  # Vertex's layout: pool 0 holds exactly one chief, pool 1 the other
  # workers (it sets TF_CONFIG / CLUSTER_SPEC from these pools).
  worker_pools = [worker_pool(1)]
  if training.replica_count > 1:
    worker_pools.append(worker_pool(training.replica_count - 1))
  return {"project": vertex.project,
          "job_spec": {"worker_pool_specs": worker_pools}}


# The only baseline strategy Vertex AI Pipelines runs, besides
# LatestArtifactStrategy (pipeline/baseline.py).
VERTEX_BASELINE_STRATEGY = tfx.dsl.experimental.LatestBlessedModelStrategy


def create_vertex_pipeline(
    config: config_lib.PipelineConfig,
    baseline_strategy=VERTEX_BASELINE_STRATEGY) -> tfx.dsl.Pipeline:
  """The local pipeline's graph, configured for Vertex AI and Dataflow;
  `baseline_strategy` None leaves the baseline Resolver out
  (pipeline/kubeflow.py)."""
  check_config(config)
  # Vertex AI keeps ML Metadata itself: no connection config.
  return pipeline.create_pipeline(
      config,
      pipeline_root=config.pipeline_root,
      data_root=config.data.root,
      serving_dir=config.serving_dir,
      beam_pipeline_args=dataflow_beam_args(config),
      vertex_training_args=vertex_training_args(config),
      vertex_region=config.vertex.region,
      baseline_strategy=baseline_strategy)


def compile_pipeline(config: config_lib.PipelineConfig,
                     output_path: str,
                     dsl_pipeline: Optional[tfx.dsl.Pipeline] = None,
                     use_pipeline_spec_2_1: bool = False) -> dict:
  """Writes the pipeline job definition of `dsl_pipeline` (default: the
  Vertex pipeline of `config`) to `output_path`; returns it. Pipeline spec
  schema 2.0.0 unless `use_pipeline_spec_2_1` (2.1.0)."""
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image=config.vertex.image,
          use_pipeline_spec_2_1=use_pipeline_spec_2_1),
      output_dir=os.path.dirname(os.path.abspath(output_path)),
      output_filename=os.path.basename(output_path))
  return runner.run(create_vertex_pipeline(config) if dsl_pipeline is None
                    else dsl_pipeline)
