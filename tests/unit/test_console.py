"""What the console shows during a run (captioner/console.py and friends):
TensorFlow's C++ noise filtered out of stderr (also for child processes),
real errors kept, one aggregated feature-cache progress line, the Trainer's
step progress, the Evaluator's summary line."""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import types

import pytest

from captioner import console
from core.config import REPO_ROOT

# Lines TensorFlow 2.21 printed on this machine at import and first use.
NOISE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are "
    "written to STDERR",
    "I0000 00:00:1796113773.716593    3826 port.cc:153] oneDNN custom "
    "operations are on. You may see slightly different numerical results due "
    "to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796113773.717058    3826 cudart_stub.cc:31] Could not find "
    "cuda drivers on your machine, GPU will not be used.",
    "I0000 00:00:1796113773.817587    3826 cpu_feature_guard.cc:227] This "
    "TensorFlow binary is optimized to use available CPU instructions in "
    "performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796113778.688757    3826 cuda_platform.cc:52] failed call to "
    "cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1796113841.612864    4860 util.cc:131] oneDNN supports "
    "DT_INT64 only on platforms with AVX-512. Falling back to the default "
    "Eigen-based implementation if present.",
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/"
    "cudart_stub.cc:32] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
]
REAL_LINES = [
    "Traceback (most recent call last):",
    "ValueError: boom",
    "/work/main/trainer/task.py:12: UserWarning: something of ours",
    "E0000 00:00:1796113778.688757    3826 op_kernel.cc:1830] OP_REQUIRES "
    "failed at example_parsing_ops.cc:98 : INVALID_ARGUMENT: Name: <unknown>",
    "W0000 00:00:1796113778.688757    3826 ops.cc:7] something else",
    "[run] Component Trainer is running.",
    "ERROR: a worker failed",
]


@pytest.mark.parametrize("line", NOISE_LINES)
def test_noise_lines_are_noise(line):
  assert console.is_noise(line)


@pytest.mark.parametrize("line", REAL_LINES)
def test_real_lines_are_kept(line):
  assert not console.is_noise(line)


def test_environment_keeps_the_callers_level():
  env = {}
  console.quiet_tensorflow_environment(env)
  assert env == {"TF_CPP_MIN_LOG_LEVEL": "2"}
  env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
  console.quiet_tensorflow_environment(env)
  assert env == {"TF_CPP_MIN_LOG_LEVEL": "0"}
  # Level 0 asks for everything: no filter (and descriptor 2 untouched).
  assert console.filter_stderr({"TF_CPP_MIN_LOG_LEVEL": "0"}) is None


_IMPORT_TF = ("import tensorflow as tf; tf.constant(1.0) + 1.0; "
              "tf.config.list_physical_devices()")


def _python(code, **env):
  return subprocess.run(
      [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT,
      env={**os.environ, "PYTHONPATH": REPO_ROOT, **env},
      capture_output=True, text=True, timeout=300)


def test_importing_tensorflow_behind_the_filter_prints_no_noise():
  # Control: the environment alone (TF_CPP_MIN_LOG_LEVEL=2) leaves noise.
  plain = _python(_IMPORT_TF, TF_CPP_MIN_LOG_LEVEL="2")
  assert plain.returncode == 0, plain.stderr
  assert any(console.is_noise(l) for l in plain.stderr.splitlines()), (
      plain.stderr)

  filtered = _python(f"""
      import subprocess, sys, warnings
      from captioner import console
      console.quiet_tensorflow_environment()
      assert console.filter_stderr() is not None
      {_IMPORT_TF}
      # A child process (as Beam's workers are) inherits the filter.
      child = subprocess.run([sys.executable, "-c", {_IMPORT_TF + "; import sys; print('child says hi', file=sys.stderr)"!r}])
      assert child.returncode == 0
      print("a real error line", file=sys.stderr)
      warnings.warn("a warning of ours")
      print("stdout is untouched")
      raise ValueError("boom")
      """)
  lines = filtered.stderr.splitlines()
  assert filtered.returncode == 1
  assert not [l for l in lines if console.is_noise(l)], filtered.stderr
  assert "child says hi" in lines
  assert "a real error line" in lines
  assert any("UserWarning: a warning of ours" in l for l in lines)
  assert "Traceback (most recent call last):" in lines  # after atexit too
  assert lines[-1] == "ValueError: boom"
  assert filtered.stdout == "stdout is untouched\n"


def test_partial_line_is_passed_on():
  run = _python("""
      import signal, sys, time
      # As in a terminal: a shell without job control (CI's background
      # run) starts its children with SIGINT ignored.
      signal.signal(signal.SIGINT, signal.default_int_handler)
      from captioner import console
      console.filter_stderr()
      sys.stderr.write("a prompt without newline: ")
      sys.stderr.flush()
      time.sleep(0.5)
      print("later", flush=True)
      """)
  assert run.stderr == "a prompt without newline: "
  assert run.stdout == "later\n"


def test_ctrl_c_traceback_still_reaches_the_terminal():
  # Ctrl-C signals the terminal's whole foreground process group; the
  # filter runs in its own session, so it lives to pass the traceback on.
  script = textwrap.dedent("""
      import signal, sys, time
      # As in a terminal: a shell without job control (CI's background
      # run) starts its children with SIGINT ignored.
      signal.signal(signal.SIGINT, signal.default_int_handler)
      from captioner import console
      console.filter_stderr()
      try:
        # Inside the try: a SIGINT right after "ready" is still caught.
        print("ready", flush=True)
        time.sleep(60)
      except KeyboardInterrupt:
        print("interrupted, cleaning up", file=sys.stderr)
        raise
      """)
  child = subprocess.Popen(
      [sys.executable, "-c", script], cwd=REPO_ROOT,
      env={**os.environ, "PYTHONPATH": REPO_ROOT}, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, start_new_session=True)
  assert child.stdout.readline() == "ready\n"
  os.killpg(child.pid, signal.SIGINT)
  _, err = child.communicate(timeout=60)
  # (Were the filter interrupted too, only its own traceback would show.)
  assert "interrupted, cleaning up" in err, err
  assert err.splitlines()[-1] == "KeyboardInterrupt", err


class FakeClock:

  def __init__(self, now=100.0):
    self.now = now

  def __call__(self):
    return self.now


def _progress(clock, every=10.0):
  out, errors = io.StringIO(), io.StringIO()
  relay = console.FeatureCacheProgress("[ExampleGen]", every, clock, out,
                                       errors)
  return relay, out, errors


def _worker_record(message, level=logging.INFO, severity="INFO"):
  # What the local job service logs for a worker's record.
  text = (f'Worker: severity: {severity} timestamp {{   seconds: 1 }} '
          f'message: "{message}" instruction_id: "bundle_1" '
          f'log_location: "/x/feature_cache.py:216" thread: "Thread-1"')
  return logging.LogRecord(console.RELAY_LOGGER, level, __file__, 1, text,
                           None, None)


def _cached(split, worker, done, total):
  return (f"feature cache [{split}]: worker {worker} has cached {done} of "
          f"{total} images (2.0/s)")


def test_relay_sums_the_latest_count_of_every_worker_into_one_line():
  clock = FakeClock()
  relay, out, _ = _progress(clock)
  relay.handle(_worker_record(_cached("train", "11.1", 1, 5000)))
  clock.now += 4
  relay.handle(_worker_record(_cached("train", "12.1", 1, 5000)))
  relay.handle(_worker_record(_cached("eval", "12.2", 1, 500)))
  clock.now += 4
  relay.handle(_worker_record(_cached("train", "11.1", 300, 5000)))
  clock.now += 4   # 12 s after the first line: time for the next
  relay.handle(_worker_record(_cached("train", "12.1", 900, 5000)))
  clock.now += 1
  relay.handle(_worker_record(_cached("train", "11.1", 400, 5000)))
  assert out.getvalue().splitlines() == [
      "[ExampleGen] train: 1 / 5000 images",
      # 300 + 900 of train, 1 of eval; (1201 - 1) images in 12 s.
      "[ExampleGen] train: 1200 / 5000 images, eval: 1 / 500 images "
      "(100.0 images/s)",
  ]


def test_relay_prints_a_split_reaching_its_total_at_once():
  clock = FakeClock()
  relay, out, _ = _progress(clock)
  relay.handle(_worker_record(_cached("dev", "11.1", 1, 500)))
  clock.now += 2
  relay.handle(_worker_record(_cached("dev", "11.1", 260, 500)))  # throttled
  clock.now += 1
  relay.handle(_worker_record(_cached("dev", "12.1", 240, 500)))  # complete
  clock.now += 1
  relay.handle(_worker_record(_cached("train", "12.2", 1, 5000)))  # throttled
  assert out.getvalue().splitlines() == [
      "[ExampleGen] dev: 1 / 500 images",
      "[ExampleGen] dev: 500 / 500 images (166.3 images/s)"]


def test_relay_prints_worker_errors_and_drops_the_rest():
  relay, out, errors = _progress(FakeClock())
  relay.handle(_worker_record("Creating state cache", logging.INFO))
  relay.handle(_worker_record("a worker warning", logging.WARNING,
                              "WARN"))
  relay.handle(_worker_record("Traceback ... OSError: disk full",
                              logging.ERROR, "ERROR"))
  assert out.getvalue() == ""
  assert "OSError: disk full" in errors.getvalue()
  assert "warning" not in errors.getvalue()


@pytest.fixture
def relay_logger():
  logger = logging.getLogger(console.RELAY_LOGGER)
  saved = (list(logger.handlers), logger.level, logger.propagate)
  yield logger
  logger.handlers[:], logger.level, logger.propagate = saved


def test_relay_parses_what_beams_job_service_logs(relay_logger, capsys):
  from apache_beam.portability.api import beam_fn_api_pb2  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.portability import local_job_service  # pylint: disable=g-import-not-at-top
  console.relay_feature_cache_progress("[cache-features]")
  entries = [beam_fn_api_pb2.LogEntry(
      severity=beam_fn_api_pb2.LogEntry.Severity.INFO,
      message=_cached("train", "7.1", 3, 40), instruction_id="bundle_1"),
             beam_fn_api_pb2.LogEntry(
                 severity=beam_fn_api_pb2.LogEntry.Severity.ERROR,
                 message="a worker's \"error\"")]
  local_job_service.BeamFnLoggingServicer().Logging(
      [beam_fn_api_pb2.LogEntry.List(log_entries=entries)])
  captured = capsys.readouterr()
  assert captured.out == "[cache-features] train: 3 / 40 images\n"
  assert "error" in captured.err


def test_relay_prints_an_in_memory_jobs_progress(relay_logger, capsys):
  """in_memory DirectRunner jobs run the DoFns here: the same line, from
  their own logger; its errors are not repeated (the console has them)."""
  logger = logging.getLogger(console.IN_PROCESS_LOGGER)
  saved = (list(logger.handlers), logger.level, logger.propagate)
  try:
    console.relay_feature_cache_progress("[ExampleGen]")
    logger.info(_cached("train", "7.1", 3, 40))
    logger.error("an error some other handler prints")
    relay_logger.info(_cached("eval", "8.1", 5, 5))
  finally:
    logger.handlers[:], logger.level, logger.propagate = saved
  captured = capsys.readouterr()
  first, second = captured.out.splitlines()
  assert first == "[ExampleGen] train: 3 / 40 images"
  assert second.startswith(   # then " (<rate> images/s)"
      "[ExampleGen] train: 3 / 40 images, eval: 5 / 5 images")
  assert captured.err == ""


def test_to_example_reports_what_the_relay_reads(monkeypatch):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from apache_beam.transforms import window  # pylint: disable=g-import-not-at-top
  from apache_beam.utils import timestamp  # pylint: disable=g-import-not-at-top
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(feature_cache, "to_example",
                      lambda *args: feature_cache.tf.train.Example())
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = feature_cache.ProgressDoFn.LOG
  assert logger.name == console.IN_PROCESS_LOGGER
  logger.addHandler(handler)
  level = logger.level
  logger.setLevel(logging.INFO)
  try:
    workers = [feature_cache.ToExample("float16", "train", 10)
               for _ in range(2)]
    where = {"window": window.GlobalWindow(),
             "timestamp": timestamp.MIN_TIMESTAMP}
    reported = 0

    def encoded(element):   # the image ids out of (id, deflated) outputs
      return [output.value[0] for output in element]
    for worker, images in zip(workers, (3, 2)):
      worker.setup()
      worker.REPORT_SECONDS = 0   # report every image
      outputs = []
      for i in range(images):
        element = (json.dumps({"image_id": i}),
                   types.SimpleNamespace(inference=np.zeros(1)))
        outputs += encoded(worker.process(element, **where))
      # Encoded a batch behind; the rest when the bundle ends, which has
      # nothing new to report since the last image.
      reported += images
      assert outputs == [] and len(records) == reported
      assert encoded(worker.finish_bundle()) == list(range(images))
    # A bundle's last images are reported when it ends.
    workers[1].REPORT_SECONDS = 3600
    element = (json.dumps({"image_id": 9}),
               types.SimpleNamespace(inference=np.zeros(1)))
    list(workers[1].process(element, **where))
    assert len(records) == 5
    assert encoded(workers[1].finish_bundle()) == [9]
    for worker in workers:
      worker.teardown()
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  assert len(records) == 6
  relay, out, _ = _progress(FakeClock(), every=0)
  for record in records:
    relay.handle(record)
  assert out.getvalue().splitlines()[-1] == (
      "[ExampleGen] train: 6 / 10 images")


def test_run_console_setup(tmp_path):
  log = tmp_path / "run.log"
  run = _python("""
      import logging
      from absl import logging as absl_logging
      from captioner import cli
      logging.basicConfig()   # as absl's first log call does (TFMA's import)
      cli._show_component_progress()
      absl_logging.info("Component Trainer is running.")
      absl_logging.info("an INFO line nobody needs on the console")
      absl_logging.warning("ArtifactQuery.property_predicate is not supported.")
      absl_logging.warning("a warning that matters")
      logging.warning("Resource module is not available for current "
                      "platform, memory usage cannot be fetched.")
      logging.warning("a root warning that matters")
      relay = logging.getLogger(
          "apache_beam.runners.portability.local_job_service")
      for worker, done in (("7.1", 5), ("8.1", 4)):   # second one throttled
        relay.info('Worker: severity: INFO message: "feature cache [train]: '
                   'worker %s has cached %d of 20 images (1.0/s)"', worker,
                   done)
      relay.error('Worker: severity: ERROR message: "a worker failed"')
      tf_logger = logging.getLogger("tensorflow")
      tf_logger.warning("From /v/lib/python3.11/site-packages/tfx_bsl/x.py:3: "
                        "f (from g) is deprecated and will be removed.")
      tf_logger.warning("From /work/main/trainer/data.py:3: h (from g) is "
                        "deprecated and will be removed.")
      """, CAPTIONER_LOG=str(log))
  assert run.returncode == 0, run.stderr
  assert run.stdout.splitlines() == [
      f"[run] full log (TFX, TensorFlow, Beam workers): {log}",
      "[run] Component Trainer is running.",
      "[ExampleGen] train: 5 / 20 images",
  ]
  err = run.stderr.splitlines()
  assert "a warning that matters" in err
  assert err.count("a root warning that matters") == 1
  assert any("a worker failed" in l for l in err)
  assert sum("trainer/data.py" in l for l in err) == 1   # ours, once
  assert not any("ArtifactQuery" in l or "site-packages" in l or "INFO line"
                 in l or "Resource module" in l for l in err), run.stderr
  full = log.read_text()
  for text in ("an INFO line nobody needs", "ArtifactQuery", "tfx_bsl/x.py",
               "Resource module",
               "worker 8.1 has cached 4", "a worker failed",
               "Component Trainer is running"):
    assert text in full


def test_step_progress_prints_at_most_every_n_seconds():
  from trainer import callbacks  # pylint: disable=g-import-not-at-top
  clock, out = FakeClock(0.0), io.StringIO()
  progress = callbacks.StepProgress(every_seconds=10, clock=clock, out=out)
  progress.set_params({"epochs": 16, "steps": 250, "verbose": 2})
  progress.on_epoch_begin(2)
  for batch in range(34):
    clock.now += 0.75   # 1.33 steps/s
    progress.on_train_batch_end(batch, {"loss": 3.123})
  progress.on_epoch_begin(3)   # the clock restarts with the epoch
  for batch in range(5):
    clock.now += 3
    progress.on_train_batch_end(batch, {"loss": 2.5})
  assert out.getvalue().splitlines() == [
      "Trainer: epoch 3/16 step 14/250 loss 3.12 (1.3 steps/s)",
      "Trainer: epoch 3/16 step 28/250 loss 3.12 (1.3 steps/s)",
      "Trainer: epoch 4/16 step 4/250 loss 2.50 (0.3 steps/s)",
  ]


def test_step_progress_in_a_real_fit():
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from trainer import callbacks  # pylint: disable=g-import-not-at-top
  clock, out = FakeClock(0.0), io.StringIO()

  class Tick(keras.callbacks.Callback):

    def on_train_batch_begin(self, batch, logs=None):
      clock.now += 4

  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(optimizer="sgd", loss="mse")
  x = np.zeros((24, 2), "float32")
  model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0,
            callbacks=[Tick(), callbacks.StepProgress(10, clock, out)])
  lines = out.getvalue().splitlines()
  # 6 steps an epoch, 4 s each: lines after steps 3 and 6 of each epoch.
  assert [l.split(" loss ")[0] for l in lines] == [
      "Trainer: epoch 1/2 step 3/6", "Trainer: epoch 1/2 step 6/6",
      "Trainer: epoch 2/2 step 3/6", "Trainer: epoch 2/2 step 6/6"]
  assert lines[0].endswith("(0.2 steps/s)")


def test_evaluator_summary_names_each_model():
  from components import caption_evaluator  # pylint: disable=g-import-not-at-top
  assert caption_evaluator._bleu4_summary(  # pylint: disable=protected-access
      {"": {"bleu_4": 0.5006, "bleu_1": 0.9}}) == "BLEU-4 0.5006"
  assert caption_evaluator._bleu4_summary(  # pylint: disable=protected-access
      {"baseline": {"bleu_4": 0.4}, "candidate": {"bleu_4": 0.5}}) == (
          "BLEU-4 0.5000 (candidate), BLEU-4 0.4000 (baseline)")


_EXIT_WITHOUT_TEARDOWN = textwrap.dedent("""
    import atexit, os, sys, threading, time
    from captioner import console
    log = open(sys.argv[1], "a", buffering=1)

    class Collected:
      # What the module teardown would run; it keeps what it needs, since
      # the teardown clears the module's names first.
      def __del__(self, fd=os.dup(log.fileno()), write=os.write):
        write(fd, b"teardown\\n")

    KEPT = Collected()
    atexit.register(lambda: log.write("atexit\\n"))
    threading.Thread(
        target=lambda: (time.sleep(0.3), log.write("thread\\n"))).start()
    console.filter_stderr()
    sys.stdout.write("no newline, still buffered")
    sys.stderr.write("to the terminal through the filter\\n")
    console.exit_without_teardown(3)
    log.write("after\\n")
""")


def test_exit_without_teardown_keeps_what_a_normal_exit_does(tmp_path):
  log = tmp_path / "log.txt"
  result = subprocess.run(
      [sys.executable, "-c", _EXIT_WITHOUT_TEARDOWN, str(log)],
      cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": REPO_ROOT},
      capture_output=True, text=True, timeout=60)
  assert result.returncode == 3, result.stderr
  assert result.stdout == "no newline, still buffered"
  assert "to the terminal through the filter" in result.stderr
  # The running thread finished, then the atexit handlers ran; the module
  # teardown (which would collect KEPT) did not, nor anything after the call.
  assert log.read_text() == "thread\natexit\n"
