import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

# Quiet TensorFlow's C++ start-up logs in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


# The test files that take longest, longest first (seconds of setup and
# calls on 2 vCPUs, 2026-12-06, AMD EPYC: 223, 185, 172, 129, 114, 112, 95,
# 72, 66; BENCHMARKS.md, "The README's two commands"). `make test` runs
# pytest-xdist with `--dist loadfile --no-loadscope-reorder`, which hands
# files out in collection order: these start first and the short files
# fill both workers' ends. xdist's own reorder (by number of tests) had
# started the 223-s file after 480 s.
SLOWEST_FILES = (
    "test_pipeline_cache.py", "test_pipeline_e2e.py",
    "test_evaluator_gate.py", "test_distributed_training.py",
    "test_feature_cache.py", "test_scst_phase.py", "test_run_datasets.py",
    "test_serving.py", "test_pipeline_feature_cache.py")


def pytest_collection_modifyitems(items):
  """The slowest files' tests first (stable: every file keeps its order)."""
  rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True, scope="session")
def _captioner_log_in_the_sessions_tmp_path(tmp_path_factory):
  """The same for the commands of session and module fixtures, which run
  before any test's own fixtures: into the session's temp folder."""
  patch = pytest.MonkeyPatch()
  patch.setenv("CAPTIONER_LOG",
               str(tmp_path_factory.mktemp("logs") / "captioner.log"))
  yield
  patch.undo()


@pytest.fixture(autouse=True)
def _captioner_log_in_tmp_path(tmp_path, monkeypatch):
  """Each test's `captioner` commands (and their subprocesses) write their
  full log into its tmp_path, which pytest cleans, not into /tmp."""
  monkeypatch.setenv("CAPTIONER_LOG", str(tmp_path / "captioner.log"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="session")
def emulator():
  """URL of a fresh in-memory GCS emulator (gcp-storage-emulator)."""
  port = _free_port()
  process = subprocess.Popen(
      [os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator"),
       "start", "--host", "localhost", "--port", str(port), "--in-memory",
       "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 20
  while True:
    try:
      socket.create_connection(("localhost", port), timeout=0.2).close()
      break
    except OSError:
      if process.poll() is not None or time.monotonic() > deadline:
        process.kill()
        pytest.fail("GCS emulator did not start: "
                    + process.stderr.read().decode())
      time.sleep(0.05)
  yield f"http://localhost:{port}"
  process.terminate()
  process.wait(timeout=10)


@pytest.fixture
def bucket(emulator):
  """A new bucket on the emulator."""
  from google.auth.credentials import AnonymousCredentials  # pylint: disable=g-import-not-at-top
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  client = storage.Client(project="test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": emulator})
  return client.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
