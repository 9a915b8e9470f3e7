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
