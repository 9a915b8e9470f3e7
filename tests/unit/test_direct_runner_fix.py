"""ingest/direct_runner_fix.py: the race it works around, and the fix.

The whole-pipeline check (5,000 examples of 125 KB through the feature
cache's grouping, two workers) takes a minute and 630 MB: it is
`benchmarks/beam_data_loss.py`, with its figures in BENCHMARKS.md."""

import subprocess
import sys
import threading
import time

from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import data_plane

from core.config import REPO_ROOT
from ingest import direct_runner_fix

CHUNK = b"x" * (1 << 20)
WRITES = 40


def _delivered(time_limit_ms):
  """Bytes a runner-side output stream passes on when its flush callback
  blocks (as on a full send queue) while the writer goes on writing."""
  delivered = []
  lock = threading.Lock()

  def slow_send(data):
    with lock:
      delivered.append(len(data))
    time.sleep(0.05)

  stream = data_plane.ClosableOutputStream.create(
      slow_send, slow_send, time_limit_ms)
  for _ in range(WRITES):
    stream.write(CHUNK)
    time.sleep(0.005)
  stream.close()
  return sum(delivered)


def test_beams_time_based_stream_drops_writes_made_during_a_slow_flush():
  """The bug itself, in the pinned Beam (if this fails, Beam has fixed it
  and the workaround can go)."""
  assert min(_delivered(20) for _ in range(3)) < WRITES * len(CHUNK)


def test_the_fix_makes_the_runners_data_server_buffer_by_size_only():
  direct_runner_fix.apply()
  assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
  stream = data_plane.ClosableOutputStream.create(
      None, None, worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
  assert not isinstance(stream,
                        data_plane.TimeBasedBufferingClosableOutputStream)
  assert _delivered(worker_handlers.DATA_BUFFER_TIME_LIMIT_MS) == (
      WRITES * len(CHUNK))


def test_the_feature_cache_applies_it_on_import():
  """In a fresh process: Beam's default, then 0 once the feature cache (what
  ExampleGen, cache-features and the pipeline import) is imported."""
  code = ("from apache_beam.runners.portability.fn_api_runner import "
          "worker_handlers as w\n"
          "before = w.DATA_BUFFER_TIME_LIMIT_MS\n"
          "from ingest import feature_cache\n"
          "print(before, w.DATA_BUFFER_TIME_LIMIT_MS)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["1000", "0"]
