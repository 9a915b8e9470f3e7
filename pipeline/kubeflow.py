"""The pipeline on a Kubeflow Pipelines v2 backend of your own (not Vertex AI).

The Vertex pipeline (pipeline/vertex.py), compiled by the same
KubeflowV2DagRunner, with the two changes the open-source KFP backend needs
(read in github.com/kubeflow/pipelines, backend/src):

- pipeline spec schema 2.1.0: its API server refuses any other ("KFP only
  supports schema version 2.1.0", apiserver/template/v2_template.go), and
  TFX writes 2.0.0 unless asked;
- no Resolver: its workflow compiler has no resolver executors ("resolver
  executors not implemented", v2/compiler/argocompiler/dag.go), so the
  Evaluator gets no baseline and gates every run by the value threshold
  alone, as on a first run.

The rest is the Vertex config: Dataflow for the Beam components, a Vertex AI
Training job for the Trainer, gs:// paths. The KFP cluster only orchestrates;
its pods need Google credentials for those.

Submission goes through the KFP SDK. Its Client.create_run_from_pipeline_package
reads a PipelineSpec (the first YAML document of a .yaml/.yml/.zip/.tar.gz
file, parsed strictly: kfp/client/client.py, _extract_pipeline_yaml), not
TFX's PipelineJob JSON ({displayName, labels, pipelineSpec, runtimeConfig}),
so `pipelineSpec` is written out as YAML, the pipeline root
(`runtimeConfig.gcsOutputDirectory`) is passed as `pipeline_root` and the
runtime parameters as `arguments`.
"""

import datetime
import json
import os
import tempfile
from typing import Any, Dict, List, Optional

import kfp
import yaml
from tfx import v1 as tfx

from core import config as config_lib
from pipeline import vertex

DEFAULT_CONFIG = os.path.join(config_lib.REPO_ROOT, "configs", "kubeflow.yaml")
SCHEMA_VERSION = "2.1.0"
# Executor kinds of a pipeline spec that KFP's backend cannot run (the
# argocompiler refuses them; importer and container it runs), and the fix.
_UNSUPPORTED_EXECUTORS = {
    "resolver": ("resolver executors are not implemented in KFP's backend "
                 "(a Resolver: compile with kfp_runner.py, which leaves it "
                 "out)"),
    "customJob": "custom job executors run on Vertex AI only",
}
# The only filesystem for artifacts that both the KFP launcher and the
# pipeline image's TensorFlow read: TF 2.21 has no s3:// or minio:// without
# tensorflow-io, which the image does not hold.
_ROOT_SCHEME = "gs://"


class SubmitError(ValueError):
  """A pipeline file or argument that the KFP backend would refuse."""


def create_kubeflow_pipeline(
    config: config_lib.PipelineConfig) -> tfx.dsl.Pipeline:
  """The Vertex pipeline's graph without the baseline Resolver."""
  return vertex.create_vertex_pipeline(config, baseline_strategy=None)


def compile_pipeline(config: config_lib.PipelineConfig,
                     output_path: str) -> dict:
  """Writes the pipeline job JSON for KFP to `output_path`; returns it."""
  return vertex.compile_pipeline(config, output_path,
                                 create_kubeflow_pipeline(config),
                                 use_pipeline_spec_2_1=True)


def load_job(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def problems(job: dict) -> List[str]:
  """Why the KFP backend would refuse `job` (TFX's PipelineJob JSON)."""
  spec = job.get("pipelineSpec")
  if not isinstance(spec, dict):
    return ["no `pipelineSpec`: not a pipeline job JSON that "
            "KubeflowV2DagRunner writes"]
  found = []
  if spec.get("schemaVersion") != SCHEMA_VERSION:
    found.append(f"pipeline spec schema {spec.get('schemaVersion')!r}: KFP's "
                 f"backend takes only {SCHEMA_VERSION} (compile with "
                 "kfp_runner.py, not vertex_runner.py)")
  executors = spec.get("deploymentSpec", {}).get("executors", {})
  for label, executor in sorted(executors.items()):
    for kind, reason in _UNSUPPORTED_EXECUTORS.items():
      if kind in executor:
        found.append(f"executor {label!r}: {reason}")
  return found


def _plain(value: Dict[str, Any]) -> Any:
  """A schema-2.0 runtime parameter value ({"stringValue": ...}) as JSON."""
  if "intValue" in value:
    return int(value["intValue"])
  if "doubleValue" in value:
    return float(value["doubleValue"])
  return value.get("stringValue", "")


def runtime_arguments(job: dict) -> Dict[str, Any]:
  """The runtime parameter values compiled into `job`, as KFP arguments."""
  runtime = job.get("runtimeConfig", {})
  if "parameterValues" in runtime:  # Schema 2.1: already plain values.
    return dict(runtime["parameterValues"])
  return {name: _plain(value)
          for name, value in runtime.get("parameters", {}).items()}


def write_package(job: dict, path: str) -> str:
  """Writes `job`'s pipeline spec where the KFP SDK reads it (a .yaml)."""
  if not path.endswith((".yaml", ".yml")):
    raise ValueError(f"the KFP SDK reads a pipeline package from .yaml, got "
                     f"{path!r}")
  with open(path, "w", encoding="utf-8") as f:
    yaml.safe_dump(job["pipelineSpec"], f, sort_keys=True)
  return path


def submit(job_path: str,
           host: str,
           experiment: Optional[str] = None,
           run_name: Optional[str] = None,
           namespace: Optional[str] = None,
           service_account: Optional[str] = None,
           pipeline_root: Optional[str] = None,
           arguments: Optional[Dict[str, Any]] = None,
           existing_token: Optional[str] = None):
  """Starts a run of the compiled `job_path` on the KFP API at `host`.

  `experiment` defaults to the pipeline's name, `run_name` to the name and
  the UTC time, `pipeline_root` to the compiled one; `arguments` are added
  to the compiled runtime parameters. `namespace`: a multi-user Kubeflow's
  profile namespace (None on a standalone KFP). `service_account`: the
  Kubernetes service account the run's pods use. `existing_token`: a bearer
  token for the API. Returns kfp's RunPipelineResult.
  """
  job = load_job(job_path)
  found = problems(job)
  if found:
    raise SubmitError(f"{job_path} would be refused: " + "; ".join(found))
  root = pipeline_root or job.get("runtimeConfig", {}).get(
      "gcsOutputDirectory", "")
  if not root.startswith(_ROOT_SCHEME):
    raise SubmitError(
        f"pipeline root must be a {_ROOT_SCHEME} path (the pipeline image's "
        f"TensorFlow reads no other object store), got {root!r}")
  name = job["pipelineSpec"]["pipelineInfo"]["name"]
  now = datetime.datetime.now(datetime.timezone.utc)
  client_args = {"host": host, "existing_token": existing_token}
  if namespace:
    client_args["namespace"] = namespace
  client = kfp.Client(**client_args)
  with tempfile.TemporaryDirectory() as tmp:
    return client.create_run_from_pipeline_package(
        pipeline_file=write_package(job, os.path.join(tmp, "pipeline.yaml")),
        arguments={**runtime_arguments(job), **(arguments or {})},
        run_name=run_name or f"{name} {now:%Y-%m-%d %H-%M-%S}",
        experiment_name=experiment or name,
        namespace=namespace,
        pipeline_root=root,
        service_account=service_account)
