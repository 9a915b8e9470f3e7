"""The SCST phase (trainer/scst.py) of the real Trainer run_fn, in a
subprocess over a tiny Transform output (tests/helpers/transformed.py):

- killed (SIGKILL) after its first checkpointed chunk and rerun with the
  same arguments: the cross-entropy phase is not redone, SCST resumes after
  the completed chunk with its optimizer state, and the model exports;
- under MirroredStrategy over two logical CPU devices
  (tests/helpers/mirrored_scst.py): one ScstTrainer step reports the loss,
  reward and baseline of both replicas' samples and steps on the gradient of
  their global mean; and run_fn's SCST phase trains and exports;
- two MultiWorkerMirroredStrategy workers on localhost
  (tests/helpers/multi_worker_scst.py) fit scst.scst_trainer's wrapper
  alike (Keras' own build step fails there: distribute.
  build_optimizer_for_fit).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from core import config as config_lib
from core.config import REPO_ROOT
from trainer import scst
from tests.helpers import ports
from tests.helpers import processes
from tests.helpers import transformed

EPOCHS = 2          # cross-entropy (Keras prints "Epoch i/n" for n > 1)
STEPS = 2
CHUNKS = 3          # SCST: three checkpointed chunks of CHUNK_STEPS
SCST_STEPS = CHUNKS * scst.CHUNK_STEPS


@pytest.fixture(scope="module")
def transform_run(tmp_path_factory):
  return transformed.make(tmp_path_factory.mktemp("transformed"))


def _args(tmp_path, folders, name, backup_dir, training=None):
  custom_config = config_lib.load(
      os.path.join(REPO_ROOT, "configs", "local.yaml"), {
          "model": {"num_layers": 1, "units": 16, "num_heads": 1,
                    "dropout": 0.0, "max_length": 12},
          "training": {"epochs": EPOCHS, "steps_per_epoch": STEPS,
                       "eval_steps": 1, "batch_size": 8,
                       "shuffle_buffer": 64, "backup_dir": str(backup_dir),
                       "sample_captions": 1, "early_stopping_patience": 99,
                       "scst_steps": SCST_STEPS, "scst_samples": 2,
                       "scst_batch_size": 4, "scst_learning_rate": 1e-3,
                       **(training or {})},
          "features": transformed.FEATURES}).trainer_custom_config()
  args = {**folders, "model": str(tmp_path / name / "model"),
          "model_run": str(tmp_path / name / "model_run"),
          "custom_config": custom_config, "train_steps": EPOCHS * STEPS,
          "eval_steps": 1}
  path = tmp_path / f"{name}.json"
  path.write_text(json.dumps(args))
  return str(path)


def _env():
  return {**{k: v for k, v in os.environ.items() if k != "TF_CONFIG"},
          "PYTHONPATH": REPO_ROOT}


def _start(helper, args_path, log, tmpdir=None):
  """`tmpdir`: the TMPDIR of a process the test kills
  (tests/helpers/processes.py)."""
  env = _env() if tmpdir is None else {**_env(), "TMPDIR": tmpdir}
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, "tests", "helpers", helper),
       args_path], cwd=REPO_ROOT, env=env, stdout=log,
      stderr=subprocess.STDOUT, start_new_session=True)


def _read(log):
  log.flush()
  log.seek(0)
  return log.read()


def _ce_losses(out):
  """The cross-entropy epochs' training losses (Keras' verbose=2 lines)."""
  return [float(m) for m in re.findall(
      r"^\d+/\d+ - .*? - loss: ([0-9.]+)", out, re.M)]


def test_scst_killed_after_a_chunk_resumes_after_it(tmp_path, transform_run):
  backup = tmp_path / "backup"
  scst_metadata = tmp_path / "backup.scst" / "training_metadata.json"
  args = _args(tmp_path, transform_run, "run", backup)

  with open(tmp_path / "first.log", "w+") as log:
    first = _start("trainer_process.py", args, log,
                   tmpdir=processes.killable_tmpdir(tmp_path))
    deadline = time.time() + 300
    while not scst_metadata.exists() and first.poll() is None:
      assert time.time() < deadline, "no SCST checkpoint within 5 minutes"
      time.sleep(0.05)
    assert first.poll() is None, ("the first run ended before an SCST "
                                  "checkpoint: " + _read(log)[-3000:])
    os.killpg(first.pid, signal.SIGKILL)  # no cleanup of any kind
    first.wait(timeout=60)
    first_out = _read(log)
  assert first.returncode == -signal.SIGKILL, first_out[-3000:]
  done = json.loads(scst_metadata.read_text())["epoch"]
  assert 1 <= done < CHUNKS, first_out[-3000:]
  # The cross-entropy phase finished and is kept beside its backup.
  assert (tmp_path / "backup.ce.weights.h5").exists()
  assert re.findall(rf"Epoch (\d+)/{EPOCHS}\b", first_out) == [
      str(e) for e in range(1, EPOCHS + 1)]
  first_losses = _ce_losses(first_out)
  assert len(first_losses) == EPOCHS, first_out[-3000:]
  assert f"scst step {done * scst.CHUNK_STEPS}/{SCST_STEPS}" in first_out

  with open(tmp_path / "second.log", "w+") as log:
    second = _start("trainer_process.py", args, log)
    second.wait(timeout=600)
    out = _read(log)
  assert second.returncode == 0, out[-5000:]

  # Cross-entropy not redone: no epoch trained, its weights and history
  # read back.
  assert "Trainer: cross-entropy phase already done" in out, out[-3000:]
  assert not re.findall(rf"Epoch \d+/{EPOCHS}\b", out), out[-3000:]
  run_dir = tmp_path / "run" / "model_run"
  history = json.loads((run_dir / "history.json").read_text())
  assert history["epoch"] == list(range(1, EPOCHS + 1))
  assert history["loss"] == pytest.approx(first_losses, abs=1e-4)

  # SCST resumed after the completed chunk, not from step 0: no progress
  # line at or before it, and the optimizer's step count was restored.
  resumed_at = done * scst.CHUNK_STEPS
  assert f"Trainer: resuming scst after step {resumed_at} from" in out
  steps = [int(s) for s in re.findall(
      rf"Trainer: scst step (\d+)/{SCST_STEPS}\b", out)]
  assert steps and min(steps) > resumed_at and max(steps) == SCST_STEPS, (
      out[-3000:])
  assert f"Trainer: scst done after {SCST_STEPS} optimizer steps" in out
  # Every chunk's history, across the resume.
  scst_history = json.loads((run_dir / "scst_history.json").read_text())
  assert scst_history["epoch"] == list(range(1, CHUNKS + 1))
  assert all(r > 0 for r in scst_history["reward"])

  # Done: the backups and the kept cross-entropy weights are gone, and the
  # export loads and captions.
  assert not (tmp_path / "backup.scst").exists()
  assert not (tmp_path / "backup.ce.weights.h5").exists()
  assert not (tmp_path / "backup.ce.history.json").exists()
  model = tf.saved_model.load(str(tmp_path / "run" / "model" /
                                  "Format-Serving"))
  _assert_captions(model)


def _assert_captions(model):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from core import features  # pylint: disable=g-import-not-at-top
  fn = model.signatures[features.FROM_FEATURES]
  key, spec = next(iter(fn.structured_input_signature[1].items()))
  grids = np.random.default_rng(5).normal(size=(2, *transformed.GRID))
  captions = fn(**{key: tf.constant(grids, spec.dtype)})[features.CAPTION]
  assert captions.shape[0] == 2


def _mirrored(mode, path):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, "tests", "helpers",
                                    "mirrored_scst.py"), mode, str(path)],
      cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  out = result.stdout + result.stderr
  assert result.returncode == 0, out[-5000:]
  return out


def test_one_scst_step_over_two_replicas_is_the_global_mean(tmp_path):
  _mirrored("step", tmp_path / "step.json")
  step = json.loads((tmp_path / "step.json").read_text())
  # Each replica sampled and scored its own two images, with its own seed.
  assert step["replica_calls"] == 2
  assert step["images_scored"] == [0, 1, 2, 3]
  assert step["samples_differ"]
  assert step["iterations"] == 1
  # The Mean trackers are synced across replicas: the reported loss is the
  # mean of the two replicas' losses (not their sum, not one replica's).
  for key in ("loss", "reward", "baseline"):
    assert step["reported"][key] == pytest.approx(step["expected"][key],
                                                  rel=1e-4, abs=1e-6), key
  assert abs(step["replica_losses"][0] - step["replica_losses"][1]) > 1e-3
  # The update is -lr x the gradient of the global mean loss: the step's
  # division by the replica count and the optimizer's all-reduce sum.
  # (Without the division the error would be the update's own size.)
  assert step["update_norm"] > 1e-2
  assert step["update_error"] < 1e-4 * step["update_norm"]


def test_scst_under_mirrored_strategy_trains_and_exports(tmp_path,
                                                         transform_run):
  steps = 4
  args = _args(tmp_path, transform_run, "mirrored", tmp_path / "backup",
               training={"steps_per_epoch": 1, "scst_steps": steps})
  out = _mirrored("trainer", args)
  assert "Trainer: MirroredStrategy, global batch 8 over 2 replicas" in out
  assert f"Trainer: scst step {steps}/{steps} reward" in out, out[-3000:]
  assert f"Trainer: scst done after {steps} optimizer steps" in out
  assert "scst weights changed: True" in out
  run_dir = tmp_path / "mirrored" / "model_run"
  scst_history = json.loads((run_dir / "scst_history.json").read_text())
  assert scst_history["epoch"] == [1]
  assert scst_history["reward"][0] > 0
  assert all(abs(v) < 1e3 for v in scst_history["loss"])
  assert not (tmp_path / "backup.scst").exists()
  _assert_captions(tf.saved_model.load(str(tmp_path / "mirrored" / "model" /
                                           "Format-Serving")))


def test_two_workers_fit_the_scst_wrapper_alike(tmp_path):
  cluster = {"worker": [f"localhost:{p}" for p in ports.free_ports(2)]}
  workers = []
  for index in range(2):
    env = {**_env(), "TF_CONFIG": json.dumps({"cluster": cluster, "task": {
        "type": "worker", "index": index}})}
    log = open(tmp_path / f"worker-{index}.log", "w+")
    workers.append((subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, "tests", "helpers",
                                      "multi_worker_scst.py"),
         str(tmp_path / f"worker-{index}.json")], cwd=REPO_ROOT, env=env,
        stdout=log, stderr=subprocess.STDOUT), log))
  # A failed worker leaves the other waiting on its collectives: stop both.
  deadline = time.time() + 300
  while any(p.poll() is None for p, _ in workers) and time.time() < deadline:
    if any(p.poll() not in (None, 0) for p, _ in workers):
      break
    time.sleep(0.2)
  for process, _ in workers:
    if process.poll() is None:
      process.kill()
      process.wait(timeout=60)
  results = []
  for index, (process, log) in enumerate(workers):
    out = _read(log)
    log.close()
    assert process.returncode == 0, out[-5000:]
    results.append(json.loads((tmp_path / f"worker-{index}.json")
                              .read_text()))
  first, second = results
  assert first["iterations"] == second["iterations"] == 2
  assert first["before"] == second["before"] != first["after"]
  assert first["after"] == second["after"]  # synchronous all-reduce
  assert first["history"] == second["history"]
  assert first["history"]["reward"][0] > 0
