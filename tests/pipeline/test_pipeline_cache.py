"""TFX caching, for real: `captioner run` six times on one pipeline root.

  1  killed (SIGKILL, the whole process group) once the Trainer has written
     its first checkpoint;
  2  the same config again: ExampleGen .. Transform are reused from the
     cache, the Trainer resumes from its backup, Evaluator and Pusher run;
  3  the same again: no component runs, and it still prints BLEU-4, the
     served model and a caption;
  4  one `training.*` key changed: Trainer, Evaluator and Pusher run;
  5  the same config from a copy of the code whose
     trainer/models/transformer.py has one more line: the Trainer's code
     fingerprint changed, so it runs again (with Evaluator and Pusher);
     Transform's code did not change;
  6  `features.extractor` changed: everything runs, ExampleGen first, but
     ImportSchemaGen (it reads only the schema file).

Which components ran is read from ML Metadata (pipeline/run_record.py).
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ingest import sample
from core.config import REPO_ROOT
from tests.helpers import processes
from tests.helpers.pipelines import ALL_COMPONENTS
from tests.helpers.pipelines import write_pipeline_config
from pipeline import run_record

PIPELINE_NAME = "cache-test"
CAPTIONER = os.path.join(os.path.dirname(sys.executable), "captioner")
EPOCHS = 4
TRAINING = (f"{{epochs: {EPOCHS}, steps_per_epoch: 10, eval_steps: 1, "
            "batch_size: 16}")
ALL = ALL_COMPONENTS
TRAINED = ["Evaluator", "Pusher", "Trainer"]


def _config(tmp_path, data_root, name, training=TRAINING, extra=""):
  return write_pipeline_config(
      tmp_path / f"config_{name}.yaml", tmp_path, data_root, PIPELINE_NAME,
      model="{num_layers: 1, units: 64, num_heads: 1}", training=training,
      bleu4_threshold=0.0, extra=extra)


def _command(config, code_root=None):
  """`captioner run`; with `code_root`, its packages come before the
  repository's."""
  path = f"{code_root}{os.pathsep}{REPO_ROOT}" if code_root else REPO_ROOT
  env = {**os.environ, "PYTHONPATH": path}
  return [CAPTIONER, "run", "--config", config], env


def _run(tmp_path, config, code_root=None):
  args, env = _command(config, code_root)
  result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  out = result.stdout + result.stderr
  assert result.returncode == 0, out[-6000:]
  record = run_record.latest_run(str(tmp_path / "metadata.db"), PIPELINE_NAME)
  return record, result.stdout


def _kill_after_first_checkpoint(tmp_path, config):
  args, env = _command(config)
  env["TMPDIR"] = processes.killable_tmpdir(tmp_path)
  process = subprocess.Popen(args, cwd=REPO_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
  pattern = str(tmp_path / "pipeline_root" / "Trainer" / "backup" / "*" /
                "training_metadata.json")
  deadline = time.time() + 600
  while not glob.glob(pattern) and process.poll() is None:
    assert time.time() < deadline, "no checkpoint within 10 minutes"
    time.sleep(0.05)
  if not glob.glob(pattern):  # it ended first: say how, not ProcessLookupError
    pytest.fail("the run ended before its first checkpoint:\n"
                + process.communicate()[0][-4000:])
  os.killpg(process.pid, signal.SIGKILL)
  log = process.communicate()[0]
  assert process.returncode == -9, log[-4000:]
  with open(glob.glob(pattern)[0]) as f:
    return json.load(f)["epoch"]


def _copy_with_changed_model(tmp_path) -> str:
  """A folder with a copy of trainer/ whose models/transformer.py has one
  more line (the other packages still come from the repository)."""
  code = tmp_path / "code"
  shutil.copytree(os.path.join(REPO_ROOT, "trainer"), code / "trainer",
                  ignore=shutil.ignore_patterns("__pycache__"))
  with open(code / "trainer" / "models" / "transformer.py", "a") as f:
    f.write("\n# A changed line: the Trainer's code fingerprint changes.\n")
  return str(code)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("cache")
  data_root = tmp_path / "data"
  sample.generate(str(data_root), num_images=30, seed=3)
  config = _config(tmp_path, data_root, "base")
  runs = {"epochs_done": _kill_after_first_checkpoint(tmp_path, config)}
  runs["resumed"] = _run(tmp_path, config)
  runs["unchanged"] = _run(tmp_path, config)
  runs["training"] = _run(tmp_path, _config(
      tmp_path, data_root, "training",
      training=TRAINING.replace("steps_per_epoch: 10", "steps_per_epoch: 8")))
  runs["trainer_code"] = _run(tmp_path, config, _copy_with_changed_model(
      tmp_path))
  runs["extractor"] = _run(tmp_path, _config(
      tmp_path, data_root, "extractor",
      extra="features: {extractor: mobilenet, alpha: 0.25, weights: none}\n"))
  return runs


def test_a_rerun_after_a_kill_reuses_the_data_and_resumes_training(runs):
  record, out = runs["resumed"]
  done = runs["epochs_done"]
  assert 1 <= done < EPOCHS
  assert record.cached() == ["DataContractCheck", "ExampleValidator",
                             "ImageCaptionExampleGen", "SchemaGen",
                             "StatisticsGen", "Transform"]
  assert record.ran() == TRAINED
  assert f"resuming after epoch {done}" in out
  assert "[run] Transform: reused from cache" in out


def test_a_rerun_with_nothing_changed_executes_no_component(runs):
  record, out = runs["unchanged"]
  assert record.ran() == []
  assert record.cached() == ALL
  # One live line per component, from LocalDagRunner's log ...
  assert len(re.findall(r"\[run\] Component \S+ reused from cache", out)) == 9
  # ... and what a run prints at the end, from the cached artifacts.
  resumed_record, _ = runs["resumed"]
  assert record.output("Evaluator", "evaluation") == resumed_record.output(
      "Evaluator", "evaluation")
  assert re.search(r"BLEU-4 on the eval split: 0\.\d{4}", out)
  assert "Nothing changed since the run that pushed this model" in out
  assert re.search(r"Pushed model: .*serving/\d+", out)
  assert re.search(r"Caption: \w+", out)


def test_a_changed_training_key_reruns_only_trainer_evaluator_pusher(runs):
  record, _ = runs["training"]
  assert record.ran() == TRAINED
  assert set(record.cached()) == set(ALL) - set(TRAINED)


def test_a_changed_trainer_code_fingerprint_reruns_the_trainer(runs):
  record, _ = runs["trainer_code"]
  assert record.ran() == TRAINED
  assert "Transform" in record.cached()
  unchanged_record, _ = runs["unchanged"]
  assert record.output("Trainer", "model") != unchanged_record.output(
      "Trainer", "model")
  assert set(record.cached()) == set(ALL) - set(TRAINED)


def test_a_changed_extractor_reruns_everything(runs):
  record, _ = runs["extractor"]
  assert record.ran() == [n for n in ALL if n != "SchemaGen"]
  assert record.cached() == ["SchemaGen"]
