"""What a person sees in the terminal while `captioner` runs a long job.

Three things, shared by `captioner run` and `captioner cache-features`:

- **TensorFlow's C++ start-up noise is dropped** (`filter_stderr`). Every
  process that imports TensorFlow 2.21 prints, from static initializers in
  two of its libraries, `WARNING: All log messages before
  absl::InitializeLog() ...`, `I0000 ... port.cc] oneDNN custom operations
  are on`, `I0000 ... cudart_stub.cc] Could not find cuda drivers` (twice
  each), then `E0000 ... cuda_platform.cc] failed call to cuInit` on a
  machine without a GPU. No environment variable stops the first ones (tried:
  TF_CPP_MIN_LOG_LEVEL=3, TF_CPP_MAX_VLOG_LEVEL, GLOG_minloglevel,
  ABSL_MIN_LOG_LEVEL, CUDA_VISIBLE_DEVICES=""; they are written before
  TensorFlow reads its settings), so file descriptor 2 is passed through a
  small filter process that drops exactly those lines (see NOISE) and passes
  everything else on, Python tracebacks and warnings included. Beam's
  multi-processing workers are child processes that inherit descriptor 2 and
  the environment, so their copies of the noise are dropped too.
  TF_CPP_MIN_LOG_LEVEL=2 (set unless already set; 3 would also hide real C++
  errors) keeps the later C++ INFO/WARNING lines out. TF_ENABLE_ONEDNN_OPTS
  is left alone: it changes numerics. TF_CPP_MIN_LOG_LEVEL=0 in the
  environment turns the filter off and shows everything.
- **Feature caching progress** (`relay_feature_cache_progress`): each Beam
  worker's ToExample (ingest/feature_cache.py) logs its own count every
  few seconds; the local job service relays worker records to the main
  process through one Python logger, where this keeps the latest count of
  every worker and prints one line for the whole job at most every 10 s:
  `[ExampleGen] train: 1200 / 5000 images, eval: 80 / 500 images
  (48.3 images/s)`. Worker errors are printed as they come.
- **Known-harmless library warnings** are kept off the console
  (`HARMLESS_WARNINGS`, `harmless_warning`), never our own code's.

And one thing it does not wait for: the interpreter's teardown after a long
job (`exit_without_teardown`).
"""

import atexit
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, Optional, Sequence, TextIO, Tuple

# Lines of TensorFlow's C++ log that are noise on every CPU-only run. A C++
# log line starts like `I0000 00:00:1796113773.716593    3826 port.cc:153] `
# (absl; before absl::InitializeLog the seconds field is the epoch time) or `2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] `
# (TensorFlow's own format). INFO lines always go (TF_CPP_MIN_LOG_LEVEL=2
# hides them too, except the ones written before it is read); WARNING and
# ERROR lines only with the messages below.
_CPP_PREFIX = (r"(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ "
               r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] )\S+:\d+\] ")
NOISE = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called "
    r"are written to STDERR\s*$",
    r"^(?:I\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: I )\S+:\d+\] ",
    _CPP_PREFIX + r"(?:failed call to cuInit"
    r"|Could not find cuda drivers"
    r"|Unable to register cu(?:FFT|DNN|BLAS) factory"
    r"|computation placer already registered"
    r"|oneDNN supports DT_\w+ only on platforms with"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized"
    r"|TF-TRT Warning: Could not find TensorRT)",
    # The second line of cpu_feature_guard's message.
    r"^To enable the following instructions: .* rebuild TensorFlow with the "
    r"appropriate compiler flags\.\s*$",
)
_NOISE = re.compile("|".join(f"(?:{p})" for p in NOISE))

# Library warnings that say nothing a user can act on (each still goes to
# the full log). Matched at the start of the message.
HARMLESS_WARNINGS = (
    # TFX's MLMD input resolution, on every component with inputs.
    "ArtifactQuery.property_predicate is not supported",
    # TFX: Transform's output lacks the property; the fallback is right.
    "Examples artifact does not have payload_format custom property",
    # tf.Transform's own graph, not ours.
    "Tables initialized inside a tf.function",
    # Beam's RunInference, once per batch when torch is not installed (its
    # memory-usage import needs torch): it only means no memory metric.
    "Resource module is not available for current platform",
    # Beam's FnApiRunner and TFX, for in_memory with several workers: the
    # FnApiRunner then splits each stage among that many threads, 1.10x on
    # `cache-features` (BENCHMARKS.md), which the warning denies.
    "If direct_num_workers is not equal to 1, direct_running_mode should be",
)
# TensorFlow's deprecation notices about calls made inside libraries:
# "From /.../site-packages/tfx_bsl/...py:388: f (from ...) is deprecated".
_LIBRARY_DEPRECATION = re.compile(
    r"^From \S*[/\\](?:site|dist)-packages[/\\]\S+: .* is deprecated")


def is_noise(line: str) -> bool:
  """Whether a line of stderr is TensorFlow C++ noise (see NOISE)."""
  return bool(_NOISE.search(line))


def harmless_warning(record: logging.LogRecord) -> bool:
  """Whether a log record is a known-harmless library warning."""
  try:
    message = record.getMessage()
  except Exception:  # pylint: disable=broad-except
    return False
  return (message.startswith(HARMLESS_WARNINGS)
          or bool(_LIBRARY_DEPRECATION.match(message)))


def quiet_tensorflow_environment(environ=None) -> None:
  """TF_CPP_MIN_LOG_LEVEL=2 unless set: no later C++ INFO/WARNING lines.

  Must run before TensorFlow is imported; Beam workers started afterwards
  inherit it (the local job service copies os.environ when it starts them).
  """
  environ = os.environ if environ is None else environ
  environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# The filter process: stdlib only, started with -I -S so it costs ~20 ms.
# It reads descriptor 0, drops noise lines, writes the rest to descriptor 1
# at once (a partial line after 0.1 s without more input, e.g. a prompt),
# and exits when every writer (this process and the Beam workers that
# inherited the pipe) has closed it. It runs in its own session, so Ctrl-C
# does not kill it before it has passed on the interrupted run's traceback.
_FILTER_PROGRAM = r"""
import json, os, re, select, sys
noise = re.compile("|".join("(?:%s)" % p for p in json.loads(sys.argv[1])))
broken = False
def out(data):
    global broken
    while data and not broken:
        try:
            data = data[os.write(1, data):]
        except InterruptedError:
            continue
        except OSError:
            broken = True  # keep reading, so writers never block
def keep(line):
    return not noise.search(line.decode("utf-8", "replace"))
pending = b""
while True:
    if pending:
        ready = select.select([0], [], [], 0.1)[0]
        if not ready:
            out(pending)
            pending = b""
            continue
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    if not chunk:
        break
    lines = (pending + chunk).split(b"\n")
    pending = lines.pop()
    out(b"".join(line + b"\n" for line in lines if keep(line)))
    if len(pending) > 65536:
        out(pending)
        pending = b""
if pending and keep(pending):
    out(pending)
"""


def filter_stderr(environ=None) -> Optional[subprocess.Popen]:
  """Passes this process's descriptor 2 through the noise filter.

  Call it before TensorFlow is imported; child processes started afterwards
  (Beam workers) write into the same filter. Returns the filter process, or
  None when it is off: TF_CPP_MIN_LOG_LEVEL=0 set by the caller (show me
  everything), or descriptor 2 unusable. At exit descriptor 2 is restored
  and the filter given a moment to pass on the last lines.
  """
  environ = os.environ if environ is None else environ
  if os.name != "posix" or environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
    return None
  try:
    sys.stderr.flush()
    original = os.dup(2)
  except (OSError, ValueError):
    return None
  try:
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _FILTER_PROGRAM, json.dumps(NOISE)],
        stdin=subprocess.PIPE, stdout=original, stderr=original,
        start_new_session=True)
  except OSError:
    os.close(original)
    return None
  os.dup2(process.stdin.fileno(), 2)
  process.stdin.close()  # descriptor 2 holds the pipe now

  def restore():
    try:
      sys.stderr.flush()
    except (OSError, ValueError):
      pass
    os.dup2(original, 2)  # closes our end of the pipe
    try:
      # Returns as soon as no Beam worker holds the pipe any more.
      process.wait(timeout=5)
    except subprocess.TimeoutExpired:
      pass

  atexit.register(restore)
  return process


# ToExample's progress message (ingest/feature_cache.py) and ToCaption's
# (serving/batch.py); in a relayed
# worker record it sits inside `message: "..."`.
_PROGRESS = re.compile(
    r"(?:feature cache|caption dataset) \[(?P<split>[^\]]+)\]: worker "
    r"(?P<worker>\S+) has (?:cached|captioned) "
    r"(?P<done>\d+) of (?P<total>\d+) images")
RELAY_LOGGER = "apache_beam.runners.portability.local_job_service"
# Where in_memory DirectRunner jobs log the same lines, in this process:
# ingest/feature_cache.py's ProgressDoFn.LOG (its module's name).
IN_PROCESS_LOGGER = "ingest.feature_cache"


class FeatureCacheProgress(logging.Handler):
  """One console line for a feature-caching job from all its workers' logs.

  Keeps the latest count of each (split, worker) and prints, at most every
  `every_seconds` (and when a split's count reaches its total), `<prefix>
  train: 1200 / 5000 images, eval: 80 / 500 images (48.3 images/s)`: the
  rate is the images counted since the first report over the time since it.
  A count lags by up to a worker's report interval; images skipped as bad
  input are never counted, so such a split stays below its total. Records of level ERROR or above (worker
  errors) go to `errors` as they are; everything else is dropped (it is in
  the full log, if any).
  """

  def __init__(self, prefix: str, every_seconds: float = 10.0,
               clock: Callable[[], float] = time.monotonic,
               out: Optional[TextIO] = None, errors: Optional[TextIO] = None,
               errors_from: Optional[str] = None):
    super().__init__(logging.INFO)
    self.errors_from = errors_from  # None: errors of every logger
    self.prefix = prefix
    self.every_seconds = every_seconds
    self.clock = clock
    self._out = out
    self._errors = errors
    self._latest: Dict[Tuple[str, str], int] = {}
    self._totals: Dict[str, int] = {}
    self._first: Optional[Tuple[float, int]] = None
    self._printed: Optional[float] = None
    self._finished = set()

  def update(self, split: str, worker: str, done: int,
             total: int) -> Optional[str]:
    """Records one worker's count; returns the line if it is time for one:
    the first report, `every_seconds` after the last line, or a split's
    count reaching its total."""
    self._totals[split] = total
    self._latest[(split, worker)] = done
    now = self.clock()
    done_by_split: Dict[str, int] = {name: 0 for name in self._totals}
    for (name, _), n in self._latest.items():
      done_by_split[name] += n
    count = sum(done_by_split.values())
    if self._first is None:
      self._first = (now, count)
    finished = {name for name, total in self._totals.items()
                if done_by_split[name] >= total} - self._finished
    due = self._printed is None or now - self._printed >= self.every_seconds
    if not (due or finished):
      return None
    self._finished |= finished
    self._printed = now
    parts = ", ".join(f"{name}: {done_by_split[name]} / {total} images"
                      for name, total in self._totals.items())
    started, counted = self._first
    if now > started:
      parts += f" ({(count - counted) / (now - started):.1f} images/s)"
    return f"{self.prefix} {parts}"

  def emit(self, record: logging.LogRecord) -> None:
    try:
      text = record.getMessage()
      found = _PROGRESS.search(text)
      if found:
        line = self.update(found["split"], found["worker"],
                           int(found["done"]), int(found["total"]))
        if line:
          print(line, file=self._out or sys.stdout, flush=True)
      elif record.levelno >= logging.ERROR and self.errors_from in (
          None, record.name):
        print(text, file=self._errors or sys.stderr, flush=True)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def exit_without_teardown(code: int) -> None:
  """Ends the process with `code` as Python's own exit would, minus the
  teardown of its modules.

  What a normal exit does first is done here too: non-daemon threads are
  joined, the atexit handlers run (logging's flush and close, the stderr
  filter's restore) and stdout/stderr are flushed. What is skipped is the
  garbage collection of every module and the C++ destructors of
  TensorFlow, Beam and gRPC: 2-5 s of one core after each pipeline run,
  with every output already written, closed and recorded in ML Metadata
  (BENCHMARKS.md, "The README's two commands").
  """
  current = threading.current_thread()
  for thread in threading.enumerate():
    if thread is not current and not thread.daemon:
      thread.join()
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)  # pylint: disable=protected-access


def relay_feature_cache_progress(prefix: str, every_seconds: float = 10.0,
                                 extra_handlers: Sequence[logging.Handler] = ()
                                 ) -> FeatureCacheProgress:
  """Relays the Beam workers' feature-cache progress and errors (only).

  The DirectRunner's multi-processing workers send every log record (INFO
  included) to the main process, which logs them through one logger. This
  replaces that logger's output with one aggregated progress line and the
  workers' errors. in_memory jobs run the DoFns in this process, where the
  same lines come from IN_PROCESS_LOGGER; both feed the one line. Works for
  `captioner cache-features` and for ImageCaptionExampleGen inside
  `captioner run` (LocalDagRunner runs the Beam job in the same process).
  `extra_handlers` (e.g. a full log file) get every record.
  """
  progress = FeatureCacheProgress(prefix, every_seconds,
                                  errors_from=RELAY_LOGGER)
  for name in (RELAY_LOGGER, IN_PROCESS_LOGGER):
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
      if isinstance(handler, FeatureCacheProgress):
        logger.removeHandler(handler)
    logger.addHandler(progress)
    for handler in extra_handlers:
      if handler not in logger.handlers:
        logger.addHandler(handler)
  return progress


class _NotHarmless(logging.Filter):

  def filter(self, record):
    return not harmless_warning(record)


def warning_handler(stream: Optional[TextIO] = None) -> logging.Handler:
  """WARNING and above to stderr, known-harmless library warnings left out."""
  handler = logging.StreamHandler(stream or sys.stderr)
  handler.setLevel(logging.WARNING)
  handler.addFilter(_NotHarmless())
  return handler


def full_log_path(command: str) -> str:
  """$CAPTIONER_LOG, else a new file in the temp folder for this run."""
  return os.environ.get("CAPTIONER_LOG") or os.path.join(
      tempfile.gettempdir(),
      f"captioner-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
      ".log")


def full_log_handler(path: str) -> logging.Handler:
  """Every INFO-or-above record, as it was logged, into `path`."""
  handler = logging.FileHandler(path, encoding="utf-8")
  handler.setLevel(logging.INFO)
  handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] "
      "%(message)s"))
  return handler


def quiet_tensorflow_logger(*extra_handlers: logging.Handler) -> None:
  """TensorFlow's Python warnings once each (its own handler and the root's
  both printed them), without library deprecation notices."""
  if "tensorflow" in sys.modules:
    from tensorflow.python.platform import tf_logging  # pylint: disable=g-import-not-at-top
    logger = tf_logging.get_logger()  # adds TF's handler now, not later
  else:
    logger = logging.getLogger("tensorflow")
  _console_handlers_to_warning_handler(logger)
  logger.propagate = False
  for handler in extra_handlers:
    logger.addHandler(handler)


def quiet_root_logger() -> None:
  """The root logger's console output as the warning handler's: absl's
  first log call with no root handler runs `logging.basicConfig()` (TFMA's
  import logs one), whose stderr handler printed every record, known-harmless
  ones included."""
  _console_handlers_to_warning_handler(logging.getLogger())


def _console_handlers_to_warning_handler(logger: logging.Logger) -> None:
  for handler in list(logger.handlers):
    if type(handler) is logging.StreamHandler:  # pylint: disable=unidiomatic-typecheck
      logger.removeHandler(handler)
  logger.addHandler(warning_handler())
