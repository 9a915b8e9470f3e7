"""The pipeline for a Kubeflow Pipelines v2 backend of your own, offline.

kfp_runner.py compiles configs/kubeflow.yaml with network connections
blocked; the submission then goes through the real KFP SDK client to a small
HTTP server started here, on localhost, that answers the KFP v2beta1 REST
calls the SDK makes (healthz, experiments, runs) and records them. Nothing
leaves the machine: connections anywhere but that server fail the test.
What a real KFP backend does with the run (its own compiler, the pods) is
not tested here (README, "Kubeflow Pipelines (your own KFP v2 cluster)").
"""

import http.server
import json
import socket
import threading
import urllib.parse

import kfp
import pytest
from kfp.client import client as kfp_client
from tfx import v1 as tfx

from core import config as config_lib
from pipeline import kubeflow
from pipeline import local as local_lib
from pipeline import vertex
import kfp_runner

KFP_CONFIG = kubeflow.DEFAULT_CONFIG
RESOLVER_ID = "latest_blessed_model_resolver"


def _no_network(*args, **kwargs):
  raise AssertionError(f"compilation tried to connect: {args}")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  """(config, path of the JSON kfp_runner.py wrote, parsed JSON)."""
  path = tmp_path_factory.mktemp("kfp") / "job.json"
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", _no_network)
    patch.setattr(socket.socket, "connect_ex", _no_network)
    patch.delenv("CAPTIONER_CONFIG", raising=False)
    kfp_runner.main(["--output", str(path)])
  return config_lib.load(KFP_CONFIG), str(path), json.loads(path.read_text())


class _KfpApi(http.server.BaseHTTPRequestHandler):
  """The KFP v2beta1 REST calls kfp.Client makes to start a run."""

  def _answer(self, body, status=200):
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def _record(self, body=None):
    url = urllib.parse.urlsplit(self.path)
    request = {"method": self.command, "path": url.path,
               "query": urllib.parse.parse_qs(url.query),
               "authorization": self.headers.get("Authorization"),
               "body": body}
    self.server.requests.append(request)
    return request

  def do_GET(self):  # pylint: disable=invalid-name
    request = self._record()
    if request["path"] == "/apis/v2beta1/healthz":
      self._answer({"multi_user": False})
    elif request["path"] == "/apis/v2beta1/experiments":
      name = json.loads(request["query"]["filter"][0])[
          "predicates"][0]["stringValue"]
      found = [e for e in self.server.experiments if e["display_name"] == name]
      self._answer({"experiments": found} if found else {})
    else:
      self._answer({"error": "not found"}, 404)

  def do_POST(self):  # pylint: disable=invalid-name
    length = int(self.headers.get("Content-Length", 0))
    request = self._record(json.loads(self.rfile.read(length) or b"{}"))
    body = request["body"]
    if request["path"] == "/apis/v2beta1/experiments":
      experiment = {**body,
                    "experiment_id": f"exp-{len(self.server.experiments)}"}
      self.server.experiments.append(experiment)
      self._answer(experiment)
    elif request["path"] == "/apis/v2beta1/runs":
      self._answer({"run_id": "run-1", "display_name": body["display_name"],
                    "experiment_id": body["experiment_id"], "state": "PENDING"})
    else:
      self._answer({"error": "not found"}, 404)

  def log_message(self, *args):  # Quiet.
    pass


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
  """(URL, server) of a fake KFP API; the only place a connection may go."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
  server.requests, server.experiments = [], []
  address = server.server_address
  thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                            daemon=True)
  thread.start()
  connect = socket.socket.connect

  def local_only(sock, target):
    if tuple(target[:2]) != address:
      raise AssertionError(f"a connection to {target}, not the fake KFP API")
    return connect(sock, target)

  monkeypatch.setattr(socket.socket, "connect", local_only)
  # The SDK reads (and in multi-user mode writes) ~/.config/kfp/context.json.
  context = tmp_path / "kfp-context.json"
  monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(context))
  yield f"http://{address[0]}:{address[1]}", server
  server.shutdown()
  server.server_close()
  assert not context.exists()


def _runs(server):
  return [r for r in server.requests
          if (r["method"], r["path"]) == ("POST", "/apis/v2beta1/runs")]


def test_the_spec_is_schema_2_1_with_no_resolver(compiled):
  _, _, job = compiled
  spec = job["pipelineSpec"]
  assert spec["schemaVersion"] == kubeflow.SCHEMA_VERSION == "2.1.0"
  assert kubeflow.problems(job) == []
  local = local_lib.create_local_pipeline(
      config_lib.load(config_lib.DEFAULT_CONFIG))
  assert set(spec["root"]["dag"]["tasks"]) == {
      c.id for c in local.components} - {RESOLVER_ID}
  executors = spec["deploymentSpec"]["executors"]
  assert all(list(e) == ["container"] for e in executors.values())
  evaluator_inputs = spec["root"]["dag"]["tasks"]["Evaluator"]["inputs"]
  assert set(evaluator_inputs["artifacts"]) == {"examples", "model"}


def test_the_rest_is_the_vertex_config(compiled):
  config, _, job = compiled
  assert job["runtimeConfig"]["gcsOutputDirectory"] == config.pipeline_root
  assert config.pipeline_root.startswith("gs://")
  executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
  assert {e["container"]["image"] for e in executors.values()} == {
      config.vertex.image}
  assert "--runner=DataflowRunner" in executors[
      "Transform_executor"]["container"]["args"]
  assert executors["Trainer_executor"]["container"]["args"][1] == (
      "tfx.extensions.google_cloud_ai_platform.trainer.executor"
      ".GenericExecutor")


def test_the_vertex_json_is_refused_before_anything_is_sent(tmp_path, kfp_api):
  url, server = kfp_api
  path = tmp_path / "vertex.json"
  vertex.compile_pipeline(config_lib.load(vertex.DEFAULT_CONFIG), str(path))
  found = kubeflow.problems(json.loads(path.read_text()))
  assert found[0].startswith("pipeline spec schema '2.0.0'")
  assert [p.split("'")[1] for p in found[1:]] == [
      f"{RESOLVER_ID}-model-blessing-resolver_executor",
      f"{RESOLVER_ID}-model-resolver_executor"]
  with pytest.raises(kubeflow.SubmitError, match="resolver executors"):
    kubeflow.submit(str(path), url)
  assert server.requests == []


def test_the_sdk_reads_the_package_as_the_compiled_spec(compiled, tmp_path):
  _, _, job = compiled
  package = kubeflow.write_package(job, str(tmp_path / "pipeline.yaml"))
  read = kfp_client._extract_pipeline_yaml  # pylint: disable=protected-access
  doc = read(package)
  assert doc.to_dict() == job["pipelineSpec"]
  assert kfp.components.load_component_from_file(package).name == (
      "image-captioning-kfp")
  # The JSON itself the SDK does not take: by name, or as a spec.
  with pytest.raises(ValueError, match="should end with one of"):
    read(str(tmp_path / "job.json"))
  (tmp_path / "job.yaml").write_text(json.dumps(job))
  with pytest.raises(Exception, match="no field named \"displayName\""):
    read(str(tmp_path / "job.yaml"))


def test_the_run_carries_the_spec_root_and_service_account(
    compiled, kfp_api, tmp_path, capsys):
  _, path, job = compiled
  url, server = kfp_api
  token = tmp_path / "token"
  token.write_text("t0ken\n")
  kfp_runner.main(["--pipeline", path, "--host", url,
                   "--namespace", "team-a", "--experiment", "captions",
                   "--run-name", "first", "--service-account", "captioner",
                   "--token-file", str(token)])
  assert "Submitted run run-1" in capsys.readouterr().out
  calls = [(r["method"], r["path"]) for r in server.requests]
  # A namespace given: no healthz probe; the experiment is made there.
  assert calls == [("GET", "/apis/v2beta1/experiments"),
                   ("POST", "/apis/v2beta1/experiments"),
                   ("POST", "/apis/v2beta1/runs")]
  assert server.requests[0]["query"]["namespace"] == ["team-a"]
  assert server.requests[1]["body"] == {"display_name": "captions",
                                        "namespace": "team-a"}
  assert {r["authorization"] for r in server.requests} == {"Bearer t0ken"}
  run, = (r["body"] for r in _runs(server))
  assert run["display_name"] == "first"
  assert run["experiment_id"] == "exp-0"
  assert run["service_account"] == "captioner"
  assert run["runtime_config"] == {
      "pipeline_root": job["runtimeConfig"]["gcsOutputDirectory"],
      "parameters": {}}
  assert run["pipeline_spec"] == job["pipelineSpec"]
  assert run["pipeline_spec"]["pipelineInfo"]["name"] == "image-captioning-kfp"
  assert {"Trainer", "Evaluator", "Pusher"} <= set(
      run["pipeline_spec"]["root"]["dag"]["tasks"])


def _tiny_job(tmp_path, use_pipeline_spec_2_1):
  """A one-component pipeline with a runtime parameter, as TFX compiles it."""
  name = f"tiny-{use_pipeline_spec_2_1}.json"
  schema_file = tfx.dsl.experimental.RuntimeParameter(
      name="schema-file", ptype=str, default="gs://b/schema.pbtxt")
  dsl_pipeline = tfx.dsl.Pipeline(
      pipeline_name="tiny", pipeline_root="gs://b/root",
      components=[tfx.components.ImportSchemaGen(schema_file=schema_file)])
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image="img", use_pipeline_spec_2_1=use_pipeline_spec_2_1),
      output_dir=str(tmp_path), output_filename=name)
  runner.run(dsl_pipeline, parameter_values={"schema-file": "gs://b/s.pbtxt"})
  return str(tmp_path / name)


def test_runtime_parameters_go_as_arguments(tmp_path, kfp_api):
  url, server = kfp_api
  # Schema 2.0 wraps values ({"stringValue": ...}), 2.1 does not.
  assert kubeflow.runtime_arguments(kubeflow.load_job(
      _tiny_job(tmp_path, False))) == {"schema-file": "gs://b/s.pbtxt"}
  path = _tiny_job(tmp_path, True)
  result = kubeflow.submit(path, url)
  assert result.run_id == "run-1"
  calls = [(r["method"], r["path"]) for r in server.requests]
  # No namespace: the SDK asks healthz whether KFP is multi-user.
  assert calls[0] == ("GET", "/apis/v2beta1/healthz")
  assert server.requests[2]["body"]["display_name"] == "tiny"
  run, = (r["body"] for r in _runs(server))
  assert run["runtime_config"] == {"pipeline_root": "gs://b/root",
                                   "parameters": {"schema-file":
                                                  "gs://b/s.pbtxt"}}
  assert run["display_name"].startswith("tiny ")
  assert "service_account" not in run
  # A second run: the experiment is found, not made again; arguments win.
  kubeflow.submit(path, url, arguments={"schema-file": "gs://b/t.pbtxt"})
  assert len(server.experiments) == 1
  assert _runs(server)[1]["body"]["runtime_config"]["parameters"] == {
      "schema-file": "gs://b/t.pbtxt"}


def test_a_root_the_image_cannot_write_is_refused(compiled, kfp_api):
  _, path, _ = compiled
  url, server = kfp_api
  with pytest.raises(kubeflow.SubmitError, match="must be a gs:// path"):
    kubeflow.submit(path, url, pipeline_root="minio://mlpipeline/v2/artifacts")
  assert server.requests == []
  with pytest.raises(SystemExit, match="must be a gs:// path"):
    kfp_runner.main(["--pipeline", path, "--host", url,
                     "--pipeline-root", "s3://bucket/root"])
