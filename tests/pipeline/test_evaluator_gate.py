"""The Evaluator's gate, for real: three pipeline runs on one pipeline root.

The whole pipeline (LocalDagRunner, Beam's DirectRunner) runs three times
against the same pipeline root, ML Metadata database and serving folder;
only the config changes between runs:

  A  a model that learns (BLEU-4 clearly above 0), bar 0.0: no blessed model
     exists yet, so there is no baseline; blessed and pushed (version 1).
  B  the same training from another seed, bar 0.99 (out of reach): the
     value threshold fails; not blessed, nothing new pushed.
  C  bar 0.0 but a model trained for one step at a tiny learning rate
     (BLEU-4 ~0): the Resolver hands the Evaluator A's model (the latest
     *blessed* one, not B's) as baseline, the change threshold fails; not
     blessed, nothing new pushed.

B and C reuse ExampleGen .. Transform from TFX's cache (caching is on by
default); their Trainers run, since their training differs from A's.

Why a run was refused is read from TFMA's validation result in the
Evaluator's evaluation artifact: one failure per threshold kind, a value
threshold on the candidate's `bleu_4`, a change threshold on its `is_diff`
key (candidate minus baseline).

Beam runs in memory here (about half the time of the multi-processing
default on two cores); test_pipeline_e2e.py covers the default.
"""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import time
from typing import List, Optional

import pytest
import tensorflow_model_analysis as tfma

from pipeline import outputs
from serving import client
from ingest import sample
from core.config import REPO_ROOT
from tests.helpers.pipelines import write_pipeline_config
from pipeline import run_record

PIPELINE_NAME = "evaluator-gate-test"
UNREACHABLE_BAR = 0.99
# ~150 steps of a small decoder: BLEU-4 about 0.2 on the 6 eval images.
LEARNS = "{epochs: 6, steps_per_epoch: 25, eval_steps: 1, batch_size: 16}"
# The same from another seed: a model of its own, about as good.
LEARNS_AGAIN = LEARNS.replace("}", ", seed: 1}")
# One step at a learning rate that changes nothing: BLEU-4 about 0.
BARELY_TRAINED = ("{epochs: 1, steps_per_epoch: 1, eval_steps: 1, "
                  "batch_size: 16, learning_rate: 1.0e-6}")
# run name -> (training section, bleu4_threshold)
RUNS = {"A": (LEARNS, 0.0), "B": (LEARNS_AGAIN, UNREACHABLE_BAR),
        "C": (BARELY_TRAINED, 0.0)}


@dataclasses.dataclass
class Failure:
  kind: str              # "value" or "change"
  metric: str
  model_name: str
  is_diff: bool
  value: float           # the metric (for "change": candidate - baseline)
  bound: Optional[float]  # a value threshold's lower bound


@dataclasses.dataclass
class Run:
  name: str
  seconds: float
  bleu: dict             # pipeline.outputs.latest_bleu after the run
  model: str             # the run's Trainer model artifact
  evaluation: str        # the run's Evaluator evaluation artifact
  blessing: str          # the run's Evaluator blessing artifact
  eval_config: dict      # evaluation/eval_config.json as TFMA wrote it
  validation_ok: bool
  failures: List[Failure]
  serving_dir: str
  versions: List[str]    # serving_dir's version folders after the run


def _config(tmp_path, data_root, name):
  training, bar = RUNS[name]
  return write_pipeline_config(
      tmp_path / f"config_{name}.yaml", tmp_path, data_root, PIPELINE_NAME,
      model="{num_layers: 1, units: 64, num_heads: 1}", training=training,
      bleu4_threshold=bar,
      extra='beam: {args: ["--direct_running_mode=in_memory"]}\n')


def _newest(pattern):
  paths = glob.glob(pattern)
  return max(paths, key=lambda p: int(os.path.basename(p))) if paths else None


def _failures(evaluation):
  result = tfma.load_validation_result(evaluation)
  failures = []
  for per_slice in result.metric_validations_per_slice:
    for f in per_slice.failures:
      threshold = f.metric_threshold
      failures.append(Failure(
          kind="value" if threshold.HasField("value_threshold") else "change",
          metric=f.metric_key.name, model_name=f.metric_key.model_name,
          is_diff=f.metric_key.is_diff,
          value=f.metric_value.double_value.value,
          bound=(threshold.value_threshold.lower_bound.value
                 if threshold.HasField("value_threshold") else None)))
  return result.validation_ok, failures


def _run_pipeline(tmp_path, data_root, name):
  env = {**os.environ, "CAPTIONER_CONFIG": _config(tmp_path, data_root, name)}
  started = time.monotonic()
  result = subprocess.run(
      [sys.executable, "local_runner.py"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
  seconds = time.monotonic() - started
  (tmp_path / f"log_{name}.txt").write_text(result.stdout + result.stderr)
  if result.returncode != 0:
    pytest.fail(f"pipeline run {name} failed:\n{result.stderr[-6000:]}")
  root = str(tmp_path / "pipeline_root")
  evaluation = _newest(os.path.join(root, "Evaluator", "evaluation", "*"))
  with open(os.path.join(evaluation, "eval_config.json")) as f:
    eval_config = json.load(f)
  validation_ok, failures = _failures(evaluation)
  serving = tmp_path / "serving"
  return Run(
      name=name, seconds=seconds, bleu=outputs.latest_bleu(root),
      model=_newest(os.path.join(root, "Trainer", "model", "*")),
      evaluation=evaluation,
      blessing=_newest(os.path.join(root, "Evaluator", "blessing", "*")),
      eval_config=eval_config, validation_ok=validation_ok,
      failures=failures, serving_dir=str(serving),
      versions=sorted(os.listdir(serving)) if serving.exists() else [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("gate")
  data_root = tmp_path / "data"
  sample.generate(str(data_root), num_images=30, seed=3)
  runs = {}
  for name in RUNS:
    runs[name] = _run_pipeline(tmp_path, data_root, name)
    previous = [r for r in runs.values() if r is not runs[name]]
    # Every run made its own model, evaluation and blessing.
    for earlier in previous:
      for field in ("model", "evaluation", "blessing"):
        assert getattr(runs[name], field) != getattr(earlier, field), field
  for run in runs.values():
    print(f"run {run.name}: {run.seconds:.0f} s, BLEU-4 "
          f"{run.bleu.get('bleu_4')}, failures {run.failures}, "
          f"versions {run.versions}")
  return runs


def _blessed(run):
  names = set(os.listdir(run.blessing))
  assert names & {"BLESSED", "NOT_BLESSED"}, names
  return "BLESSED" in names and "NOT_BLESSED" not in names


def _model_locations(run):
  return {name: os.path.normpath(path)
          for name, path in run.eval_config["modelLocations"].items()}


def _serving_model(run):
  return os.path.normpath(os.path.join(run.model, "Format-Serving"))


def _thresholds(run):
  """The bleu_4 threshold TFMA was given, as written in eval_config.json."""
  metrics = [m for spec in run.eval_config["evalConfig"]["metricsSpecs"]
             for m in spec["metrics"] if "threshold" in m]
  assert len(metrics) == 1 and json.loads(metrics[0]["config"]) == {
      "order": 4}
  return metrics[0]["threshold"]


def test_first_run_has_no_baseline_and_is_blessed_and_pushed(runs):
  a = runs["A"]
  assert set(a.bleu) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4"}
  assert a.bleu["bleu_4"] > 0.05, a.bleu
  # No blessed model yet: TFX evaluates the candidate alone and drops the
  # change threshold (rubber stamp); only the value threshold is checked.
  assert _model_locations(a) == {"": _serving_model(a)}
  assert _thresholds(a) == {"valueThreshold": {"lowerBound": 0.0}}
  assert a.validation_ok and a.failures == []
  assert _blessed(a)
  assert len(a.versions) == 1


def test_the_pushed_version_is_run_a_model(runs):
  a = runs["A"]
  pushed = client.latest_version_dir(a.serving_dir)
  assert pushed == os.path.join(a.serving_dir, a.versions[0])
  with open(os.path.join(pushed, "saved_model.pb"), "rb") as f:
    pushed = f.read()
  with open(os.path.join(_serving_model(a), "saved_model.pb"), "rb") as f:
    trained = f.read()
  assert pushed == trained


def test_below_the_bar_is_not_blessed_nor_pushed(runs):
  a, b = runs["A"], runs["B"]
  assert b.bleu["bleu_4"] < UNREACHABLE_BAR
  # The latest blessed model (A's) is the baseline, both thresholds apply.
  assert _model_locations(b) == {"candidate": _serving_model(b),
                                 "baseline": _serving_model(a)}
  assert set(_thresholds(b)) == {"valueThreshold", "changeThreshold"}
  assert not b.validation_ok
  assert not _blessed(b)
  value_failures = [f for f in b.failures if f.kind == "value"]
  assert value_failures == [Failure(
      kind="value", metric="bleu_4", model_name="candidate", is_diff=False,
      value=pytest.approx(b.bleu["bleu_4"]), bound=UNREACHABLE_BAR)]
  # A's training from another seed; if it scored lower, the change
  # threshold fails as well.
  change_failures = [f for f in b.failures if f.kind == "change"]
  if b.bleu["bleu_4"] >= a.bleu["bleu_4"]:
    assert change_failures == []
  else:
    assert [(f.metric, f.is_diff) for f in change_failures] == [
        ("bleu_4", True)]
  assert b.versions == a.versions


def test_below_the_last_blessed_model_is_not_blessed_nor_pushed(runs):
  a, c = runs["A"], runs["C"]
  # Clears the bar (0.0: no value failure below) but is clearly worse than A.
  assert c.bleu["bleu_4"] < a.bleu["bleu_4"] - 0.05, (a.bleu, c.bleu)
  # The baseline is A's model, the latest blessed one, not B's (newer but
  # not blessed).
  assert _model_locations(c) == {"candidate": _serving_model(c),
                                 "baseline": _serving_model(a)}
  assert not c.validation_ok
  assert not _blessed(c)
  # Only the change threshold failed, on candidate - baseline.
  assert c.failures == [Failure(
      kind="change", metric="bleu_4", model_name="candidate", is_diff=True,
      value=pytest.approx(c.bleu["bleu_4"] - a.bleu["bleu_4"]), bound=None)]
  assert c.versions == a.versions


def test_the_report_shows_both_models_and_why_it_was_refused(runs):
  page = open(os.path.join(runs["C"].evaluation, "report.html")).read()
  assert "Blessed: no." in page
  # Candidate and baseline rows of the corpus metrics, and the failure.
  assert ">candidate<" in page and ">baseline<" in page
  assert "bleu_4 (candidate)" in page
  assert "Blessed: yes." in open(os.path.join(runs["A"].evaluation,
                                              "report.html")).read()


def test_later_runs_reuse_the_data_components_from_the_cache(runs):
  record = run_record.latest_run(
      os.path.join(os.path.dirname(runs["C"].serving_dir), "metadata.db"),
      PIPELINE_NAME)
  assert record.ran() == ["Evaluator", "Pusher", "Trainer"]
  assert {"ImageCaptionExampleGen", "Transform"} <= set(record.cached())
