"""The Vertex AI pipeline compiles, offline, from configs/vertex.yaml.

Nothing runs on Google Cloud here: these tests read the compiled pipeline
JSON (what `tfx run create --engine vertex` submits) and check that it is the
local pipeline's graph with only its configuration changed.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from tfx import v1 as tfx

from core import config as config_lib
from pipeline import local as local_lib
from pipeline import vertex
import vertex_runner

VERTEX_CONFIG = os.path.join(config_lib.REPO_ROOT, "configs", "vertex.yaml")
BEAM_COMPONENTS = ("ImageCaptionExampleGen", "StatisticsGen", "Transform",
                   "Evaluator")
cloud = tfx.extensions.google_cloud_ai_platform


def _no_network(*args, **kwargs):
  raise AssertionError(f"compilation tried to connect: {args}")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  """(config, pipeline JSON text, parsed JSON, output folder)."""
  out_dir = tmp_path_factory.mktemp("vertex")
  config = config_lib.load(VERTEX_CONFIG)
  with pytest.MonkeyPatch.context() as patch:
    # Compilation must not call any Google Cloud API.
    patch.setattr(socket.socket, "connect", _no_network)
    patch.setattr(socket.socket, "connect_ex", _no_network)
    vertex.compile_pipeline(config, str(out_dir / "pipeline.json"))
  text = (out_dir / "pipeline.json").read_text()
  return config, text, json.loads(text), out_dir


def _tasks(job):
  return job["pipelineSpec"]["root"]["dag"]["tasks"]


def _parameter(task, name):
  value = task["inputs"]["parameters"][name]["runtimeValue"]
  # Schema 2.0 wraps constants in constantValue, 2.1 in constant.
  constant = value.get("constantValue", value.get("constant"))
  return constant["stringValue"] if isinstance(constant, dict) else constant


def _executor_args(job, component_id):
  executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
  return executors[f"{component_id}_executor"]["container"]["args"]


def test_every_component_of_the_local_pipeline_is_there(compiled):
  _, _, job, _ = compiled
  local = local_lib.create_local_pipeline(
      config_lib.load(config_lib.DEFAULT_CONFIG))
  local_ids = {c.id for c in local.components}
  tasks = _tasks(job)
  # A Resolver compiles to tasks named `<id>-...`; the rest keep their id.
  task_owners = {next((i for i in local_ids
                       if task == i or task.startswith(i + "-")), task)
                 for task in tasks}
  assert task_owners == local_ids


def test_the_trainer_runs_in_the_configured_vertex_worker_pool(compiled):
  config, _, job, _ = compiled
  training = config.vertex.training
  custom_config = json.loads(_parameter(_tasks(job)["Trainer"],
                                        "custom_config"))
  assert custom_config[cloud.ENABLE_VERTEX_KEY] is True
  assert custom_config[cloud.VERTEX_REGION_KEY] == config.vertex.region
  job_args = custom_config[cloud.TRAINING_ARGS_KEY]
  assert job_args["project"] == config.vertex.project
  chief, = job_args["job_spec"]["worker_pool_specs"]
  assert chief["machine_spec"] == {
      "machine_type": training.machine_type,
      "accelerator_type": training.accelerator_type,
      "accelerator_count": training.accelerator_count}
  assert training.accelerator_type and training.accelerator_count >= 1
  assert chief["replica_count"] == training.replica_count == 1
  assert chief["container_spec"]["image_uri"] == config.vertex.image
  # run_fn still gets its sections, unchanged.
  for section in ("model", "training", "features"):
    assert custom_config[section] == getattr(config, section).model_dump()
  assert _executor_args(job, "Trainer")[1] == (
      "tfx.extensions.google_cloud_ai_platform.trainer.executor"
      ".GenericExecutor")


def test_more_replicas_add_a_worker_pool_and_no_accelerator_means_cpu():
  config = config_lib.load(VERTEX_CONFIG, overrides={"vertex": {"training": {
      "replica_count": 3, "accelerator_type": ""}}})
  chief, workers = vertex.vertex_training_args(
      config)["job_spec"]["worker_pool_specs"]
  assert (chief["replica_count"], workers["replica_count"]) == (1, 2)
  assert chief["machine_spec"] == workers["machine_spec"] == {
      "machine_type": config.vertex.training.machine_type}


def test_beam_components_run_on_dataflow_in_the_pipeline_image(compiled):
  config, _, job, _ = compiled
  dataflow = config.vertex.dataflow
  for component_id in BEAM_COMPONENTS:
    args = _executor_args(job, component_id)
    for expected in ("--runner=DataflowRunner",
                     f"--project={config.vertex.project}",
                     f"--region={config.vertex.region}",
                     f"--temp_location={dataflow.temp_location}",
                     f"--machine_type={dataflow.machine_type}",
                     f"--max_num_workers={dataflow.max_num_workers}",
                     f"--sdk_container_image={config.vertex.image}"):
      assert expected in args, (component_id, expected, args)
  executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
  assert {e["container"]["image"] for e in executors.values()
          if "container" in e} == {config.vertex.image}


def test_a_setup_file_and_extra_beam_args_are_passed_on():
  config = config_lib.load(VERTEX_CONFIG, overrides={
      "vertex": {"dataflow": {"setup_file": "/pipeline/setup.py",
                              "sdk_container_image": "gcr.io/p/worker:1"}},
      "beam": {"args": ["--disk_size_gb=100"]}})
  args = vertex.dataflow_beam_args(config)
  assert "--setup_file=/pipeline/setup.py" in args
  assert "--sdk_container_image=gcr.io/p/worker:1" in args
  assert args[-1] == "--disk_size_gb=100"


def test_paths_are_the_configured_gcs_ones(compiled):
  config, _, job, _ = compiled
  assert job["runtimeConfig"]["gcsOutputDirectory"] == config.pipeline_root
  assert config.pipeline_root.startswith("gs://")
  tasks = _tasks(job)
  assert _parameter(tasks["ImageCaptionExampleGen"],
                    "input_base") == config.data.root
  assert config.serving_dir in _parameter(tasks["Pusher"], "push_destination")


def test_no_path_of_the_build_machine_is_in_the_pipeline(compiled):
  _, text, _, out_dir = compiled
  home = os.path.expanduser("~")
  for local_path in (config_lib.REPO_ROOT, str(out_dir), "/work/",
                     "/tmp/", home if len(home) > 1 else config_lib.REPO_ROOT):
    assert local_path not in text, local_path


@pytest.mark.parametrize("key,overrides", [
    ("pipeline_root", {"pipeline_root": "build/pipeline_root"}),
    ("data.root", {"data": {"root": "/data/coco2017"}}),
    ("serving_dir", {"serving_dir": "build/serving"}),
    ("vertex.dataflow.temp_location",
     {"vertex": {"dataflow": {"temp_location": "/tmp/beam"}}}),
])
def test_a_local_path_is_refused_naming_its_key(tmp_path, key, overrides):
  config = config_lib.load(VERTEX_CONFIG, overrides=overrides)
  with pytest.raises(config_lib.ConfigError, match=rf"'{key}' must be a gs://"):
    vertex.compile_pipeline(config, str(tmp_path / "pipeline.json"))
  assert not (tmp_path / "pipeline.json").exists()


def test_main_writes_to_output_with_the_vertex_config_by_default(
    tmp_path, monkeypatch):
  monkeypatch.delenv("CAPTIONER_CONFIG", raising=False)
  output = tmp_path / "out" / "job.json"
  vertex_runner.main(["--output", str(output)])
  assert json.loads(output.read_text())["displayName"] == (
      "image-captioning-vertex")


def test_main_exits_with_the_config_error(tmp_path):
  with pytest.raises(SystemExit, match=r"'pipeline_root' must be a gs://"):
    vertex_runner.main(["--config", config_lib.DEFAULT_CONFIG,
                        "--output", str(tmp_path / "job.json")])


def test_the_tfx_command_line_compiles_it_for_tfx_run_create(
    compiled, tmp_path):
  """`tfx pipeline create --engine vertex` writes what `run create` submits."""
  _, _, job, _ = compiled
  bin_dir = os.path.dirname(sys.executable)
  env = {**os.environ, "VERTEX_HOME": str(tmp_path),
         # The CLI looks for kfp in `pip freeze` of the pip on PATH.
         "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
  env.pop("CAPTIONER_CONFIG", None)
  result = subprocess.run(
      [os.path.join(bin_dir, "tfx"), "pipeline", "create", "--engine",
       "vertex", "--pipeline_path", "vertex_runner.py"],
      cwd=config_lib.REPO_ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  written = tmp_path / "image-captioning-vertex" / "pipeline.json"
  assert json.loads(written.read_text())["pipelineSpec"] == job["pipelineSpec"]

  # The Vertex AI SDK accepts it as a PipelineJob template (nothing sent).
  from google.auth import credentials  # pylint: disable=g-import-not-at-top
  from google.cloud.aiplatform import pipeline_jobs  # pylint: disable=g-import-not-at-top
  pipeline_job = pipeline_jobs.PipelineJob(
      display_name="image-captioning-vertex", template_path=str(written),
      project="my-project", location="us-central1",
      credentials=credentials.AnonymousCredentials())
  assert pipeline_job._gca_resource.runtime_config.gcs_output_directory == (  # pylint: disable=protected-access
      job["runtimeConfig"]["gcsOutputDirectory"])
