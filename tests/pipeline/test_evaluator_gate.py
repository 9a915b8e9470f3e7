"""The Evaluator's gate, for real: five pipeline runs on one pipeline root.

The whole pipeline (LocalDagRunner, Beam's DirectRunner) runs five times
against the same pipeline root and ML Metadata database; only the config
changes between runs. Gating on BLEU-4 (the default), into one serving
folder:

  A  a model that learns (BLEU-4 clearly above 0), bar 0.0: no blessed model
     exists yet, so there is no baseline; blessed and pushed (version 1).
  B  the same training from another seed, bar 0.99 (out of reach): the
     value threshold fails; not blessed, nothing new pushed.
  C  bar 0.0 but a model trained for one step at a tiny learning rate
     (BLEU-4 ~0): the Resolver hands the Evaluator A's model (the latest
     *blessed* one, not B's) as baseline, the change threshold fails; not
     blessed, nothing new pushed.

Gating on CIDEr-D (`evaluation.gate_metric: cider_d`), run between B and
C, pushing into a serving folder of their own; both train as A did, so
their Trainer is A's from the cache and no model is trained for them (the
Evaluator and Pusher run, as the EvalConfig differs). A's model is their
candidate and, being the candidate, no baseline (pipeline/baseline.py), so
the CIDEr-D bar alone decides, set from A's own CIDEr-D:

  D  bar just above A's CIDEr-D: not blessed, nothing pushed.
  E  bar just below it: blessed and pushed.

B, C, D and E reuse ExampleGen .. Transform from TFX's cache (caching is on
by default); B's and C's Trainers run, since their training differs from A's.

Why a run was refused is read from TFMA's validation result in the
Evaluator's evaluation artifact: one failure per threshold kind, a value
threshold on the candidate's `bleu_4`, a change threshold on its `is_diff`
key (candidate minus baseline).

Beam runs in memory (the bundled default, configs/local.yaml);
test_pipeline_e2e.py covers multi_processing.
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

from components import caption_evaluator
from core.config import REPO_ROOT
from ingest import sample
from pipeline import outputs
from pipeline import run_record
from serving import client
from tests.helpers.pipelines import write_pipeline_config

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
# CIDEr-D gate runs: name -> the bar's offset from run A's CIDEr-D.
CIDER_MARGIN = 0.01
CIDER_RUNS = {"D": +CIDER_MARGIN, "E": -CIDER_MARGIN}
CIDER_SERVING = "serving_cider_d"
# The order the runs are made in (C last: its record is the latest run's).
ORDER = ("A", "B", "D", "E", "C")


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
  metrics: dict          # every corpus metric of the run's candidate
  model: str             # the newest Trainer model artifact after the run
  evaluation: str        # the run's Evaluator evaluation artifact
  blessing: str          # the run's Evaluator blessing artifact
  eval_config: dict      # evaluation/eval_config.json as TFMA wrote it
  validation_ok: bool
  failures: List[Failure]
  serving_dir: str
  versions: List[str]    # serving_dir's version folders after the run


def _config(tmp_path, data_root, name, cider_d_bar=None):
  if cider_d_bar is None:
    training, bar = RUNS[name]
    evaluation, serving = "", "serving"
  else:  # A's training (so A's model, from the cache), gated on CIDEr-D.
    (training, bar), serving = RUNS["A"], CIDER_SERVING
    evaluation = f", gate_metric: cider_d, cider_d_threshold: {cider_d_bar!r}"
  return write_pipeline_config(
      tmp_path / f"config_{name}.yaml", tmp_path, data_root, PIPELINE_NAME,
      model="{num_layers: 1, units: 64, num_heads: 1}", training=training,
      bleu4_threshold=bar, evaluation=evaluation, serving=serving)


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


def _run_pipeline(tmp_path, data_root, name, cider_d_bar=None):
  env = {**os.environ,
         "CAPTIONER_CONFIG": _config(tmp_path, data_root, name, cider_d_bar)}
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
  serving = tmp_path / ("serving" if cider_d_bar is None else CIDER_SERVING)
  metrics = caption_evaluator.corpus_metrics(evaluation)
  return Run(
      name=name, seconds=seconds, bleu=outputs.latest_bleu(root),
      metrics=metrics.get("candidate", metrics.get("")),
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
  for name in ORDER:
    cider_d_bar = None
    if name in CIDER_RUNS:
      cider_d_bar = runs["A"].metrics["cider_d"] + CIDER_RUNS[name]
    runs[name] = _run_pipeline(tmp_path, data_root, name, cider_d_bar)
    previous = [r for r in runs.values() if r is not runs[name]]
    # Every run made its own evaluation and blessing, and its own model
    # but for the CIDEr-D runs (A's, from the cache).
    for earlier in previous:
      fields = ["evaluation", "blessing"]
      if name not in CIDER_RUNS and earlier.name not in CIDER_RUNS:
        fields.append("model")
      for field in fields:
        assert getattr(runs[name], field) != getattr(earlier, field), field
  for run in runs.values():
    print(f"run {run.name}: {run.seconds:.0f} s, BLEU-4 "
          f"{run.bleu.get('bleu_4')}, CIDEr-D {run.metrics.get('cider_d')}, "
          f"failures {run.failures}, versions {run.versions}")
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


def _cider_d_threshold(run):
  """The one threshold TFMA was given, on cider_d (CiderD, no config)."""
  metrics = [m for spec in run.eval_config["evalConfig"]["metricsSpecs"]
             for m in spec["metrics"] if "threshold" in m]
  assert [m["className"] for m in metrics] == ["CiderD"]
  return metrics[0]["threshold"]


def test_every_run_reports_cider_d_and_rouge_l(runs):
  for run in runs.values():
    assert {"cider_d", "rouge_l"} <= set(run.metrics), run.name
    assert 0.0 <= run.metrics["rouge_l"] <= 1.0
  assert runs["A"].metrics["cider_d"] > 5 * CIDER_MARGIN, runs["A"].metrics


def test_below_the_cider_d_bar_is_not_blessed_nor_pushed(runs):
  a, d = runs["A"], runs["D"]
  # A's model, from the cache (no new Trainer/model folder, so `d.model`,
  # the newest folder, is B's): the candidate, hence no baseline.
  assert _model_locations(d) == {"": _serving_model(a)}
  bar = a.metrics["cider_d"] + CIDER_MARGIN
  assert _cider_d_threshold(d) == {
      "valueThreshold": {"lowerBound": pytest.approx(bar, abs=1e-12)}}
  assert d.metrics["cider_d"] < bar
  assert not d.validation_ok and not _blessed(d)
  assert d.failures == [Failure(
      kind="value", metric="cider_d", model_name="", is_diff=False,
      value=pytest.approx(d.metrics["cider_d"]),
      bound=pytest.approx(bar, abs=1e-12))]
  assert d.versions == []


def test_above_the_cider_d_bar_is_blessed_and_pushed(runs):
  a, e = runs["A"], runs["E"]
  assert _model_locations(e) == {"": _serving_model(a)}
  bar = a.metrics["cider_d"] - CIDER_MARGIN
  assert _cider_d_threshold(e) == {
      "valueThreshold": {"lowerBound": pytest.approx(bar, abs=1e-12)}}
  assert e.metrics["cider_d"] >= bar
  assert e.validation_ok and e.failures == [] and _blessed(e)
  assert len(e.versions) == 1
  with open(os.path.join(e.serving_dir, e.versions[0], "saved_model.pb"),
            "rb") as f:
    pushed = f.read()
  with open(os.path.join(_serving_model(a), "saved_model.pb"), "rb") as f:
    assert pushed == f.read()
  # BLEU-4 is reported but not gated on: its bar (0.0) is not in the config.
  assert "bleu_4" in e.metrics


def test_the_report_shows_cider_d_per_image_and_in_the_corpus_table(runs):
  evaluation = runs["E"].evaluation
  page = open(os.path.join(evaluation, "report.html")).read()
  assert "<th>CIDEr-D</th>" in page and ">cider_d<" in page
  assert f"{runs['E'].metrics['cider_d']:.4f}" in page
  rows = json.load(open(os.path.join(evaluation, "report.json")))
  assert rows and all(row["cider_d"] >= 0.0 for row in rows)
