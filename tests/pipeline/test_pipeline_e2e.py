"""The whole pipeline, for real, through the TFX command line on a tiny sample.

`tfx pipeline create` / `tfx run create --engine local` run
local_runner.py, i.e. LocalDagRunner with Beam's DirectRunner. The
sample gets one annotation naming a missing file and one corrupt JPEG, which
must be skipped, counted and reported while the rest goes through.

Beam runs multi_processing with two workers here, as the real-photo configs
(flickr8k.yaml) do; the bundled default and the other pipeline tests run
in_memory.
"""

import glob
import html
import json
import os
import re
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from pipeline import outputs
from serving import client
from core import config as config_lib
from ingest import sample
from components import caption_evaluator
from core import extractors
from core.config import REPO_ROOT
from tests.helpers import processes
from tests.helpers.pipelines import write_pipeline_config
from pipeline import validation

PIPELINE_NAME = "e2e-test"


def _tiny_dataset(root):
  sample.generate(str(root), num_images=30, seed=3)
  train_json = root / "annotations" / "captions_train2017.json"
  coco = json.loads(train_json.read_text())
  coco["images"].append({"id": 9999, "file_name": "000000009999.jpg",
                         "width": 160, "height": 160})
  coco["annotations"].append({"id": 99990, "image_id": 9999,
                              "caption": "a red circle on the left"})
  train_json.write_text(json.dumps(coco))
  corrupt = root / "train2017" / coco["images"][0]["file_name"]
  corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
  return len(coco["images"]) - 2


def _config(tmp_path, data_root):
  return write_pipeline_config(
      tmp_path / "config.yaml", tmp_path, data_root, PIPELINE_NAME,
      model="{num_layers: 1, units: 32, num_heads: 1}",
      training="{epochs: 2, steps_per_epoch: 4, eval_steps: 1, "
      "batch_size: 16}", bleu4_threshold=0.0,
      extra='beam: {args: ["--direct_running_mode=multi_processing", '
      '"--direct_num_workers=2"]}\n')


def _tfx(args, env):
  tfx_cli = os.path.join(os.path.dirname(sys.executable), "tfx")
  result = subprocess.run([tfx_cli, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
  if result.returncode != 0:
    pytest.fail(f"tfx {' '.join(args)} failed:\n{result.stdout[-3000:]}\n"
                f"{result.stderr[-6000:]}")
  return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("e2e")
  data_root = tmp_path / "data"
  good_train_images = _tiny_dataset(data_root)
  env = {**os.environ, "CAPTIONER_CONFIG": _config(tmp_path, data_root),
         "LOCAL_HOME": str(tmp_path / "tfx_home")}
  _tfx(["pipeline", "create", "--engine", "local", "--pipeline_path",
        "local_runner.py"], env)
  log = _tfx(["run", "create", "--engine", "local", "--pipeline_name",
              PIPELINE_NAME], env)
  return tmp_path, data_root, good_train_images, log


def test_bad_images_are_skipped_counted_and_reported(pipeline_run):
  tmp_path, _, good_train_images, log = pipeline_run
  examples_dir, = glob.glob(str(
      tmp_path / "pipeline_root/ImageCaptionExampleGen/examples/*"))
  with open(os.path.join(examples_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["train"]["processed"] == good_train_images
  assert summary["train"]["skipped"] == {"missing_file": 1,
                                         "undecodable_image": 1}
  assert summary["eval"]["skipped"] == {}
  dead = [json.loads(line) for path in glob.glob(
      os.path.join(examples_dir, "dead_letters", "train-*")) for line in
          open(path)]
  assert sorted(d["reason"] for d in dead) == ["missing_file",
                                               "undecodable_image"]
  assert {d["image_id"] for d in dead if d["reason"] == "missing_file"} == {
      9999}
  assert "1 missing_file" in log and "1 undecodable_image" in log


def test_the_example_validator_found_no_anomalies_in_the_sample(pipeline_run):
  tmp_path, log = pipeline_run[0], pipeline_run[3]
  root = str(tmp_path / "pipeline_root")
  # The run's schema is the curated one (ImportSchemaGen), not inferred.
  schema, = glob.glob(os.path.join(root, "SchemaGen", "schema", "*",
                                   "schema.pbtxt"))
  with open(schema) as imported, open(validation.SCHEMA_FILE) as curated:
    assert imported.read() == curated.read()
  run, = glob.glob(os.path.join(root, "ExampleValidator", "anomalies", "*"))
  for split in ("train", "eval"):
    assert os.path.isfile(os.path.join(run, f"Split-{split}",
                                       validation.ANOMALIES_FILE))
  assert validation.latest_anomalies(root) == {"train": [], "eval": []}
  features = config_lib.load(str(tmp_path / "config.yaml")).features
  grid = extractors.extractor_spec(features.extractor,
                                   features.patch_image_size,
                                   features.patch_size).grid
  result = validation.check_run(root, grid, features.dtype)
  assert result.lines == ["[validate] eval: no anomalies",
                          "[validate] train: no anomalies"]
  assert not result.stop
  # DataContractCheck passed, and Transform started only after it.
  assert (log.index("Component DataContractCheck is finished")
          < log.index("Component Transform is running"))


def test_the_evaluator_scored_bleu_and_blessed(pipeline_run):
  tmp_path = pipeline_run[0]
  scores = outputs.latest_bleu(str(tmp_path / "pipeline_root"))
  assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4"}
  assert all(0.0 <= v <= 1.0 for v in scores.values())
  blessing, = glob.glob(str(tmp_path / "pipeline_root/Evaluator/blessing/*"))
  assert os.path.exists(os.path.join(blessing, "BLESSED"))


def test_the_pushed_model_captions_raw_jpeg_bytes(pipeline_run):
  tmp_path, data_root = pipeline_run[0], pipeline_run[1]
  pushed = client.latest_version_dir(str(tmp_path / "serving"))
  assert pushed is not None
  assert os.path.exists(os.path.join(pushed, "saved_model.pb"))
  model = tf.saved_model.load(pushed)
  images = sorted(glob.glob(str(data_root / "val2017" / "*.jpg")))[:3]
  raw = [open(p, "rb").read() for p in images]
  captions = model.signatures["serving_default"](
      image_bytes=tf.constant(raw))["caption"].numpy()
  assert len(captions) == 3
  vocab_file, = glob.glob(os.path.join(pushed, "assets", "*"))
  vocabulary = set(open(vocab_file).read().split())
  for caption in captions:
    words = caption.decode("utf-8").split()
    assert words, "empty caption"
    assert set(words) <= vocabulary


def test_the_evaluation_artifact_holds_an_html_report(pipeline_run):
  tmp_path, data_root = pipeline_run[0], pipeline_run[1]
  evaluation, = glob.glob(str(tmp_path / "pipeline_root/Evaluator/evaluation/*"))
  page = open(os.path.join(evaluation, "report.html")).read()
  links = re.findall(r'(?:src|href)="([^"]*)"', page)
  eval_images = len(list((data_root / "val2017").glob("*.jpg")))
  assert len(links) == min(eval_images, caption_evaluator.REPORT_IMAGES)
  for link in links:
    assert not link.startswith("/") and "://" not in link, link
    assert os.path.isfile(os.path.join(evaluation, link)), link
  rows = json.load(open(os.path.join(evaluation, "report.json")))
  assert [r["image_id"] for r in rows] == sorted(r["image_id"] for r in rows)
  for row in rows:
    assert row["caption"] and row["references"]
    assert row["caption"] in page or html.escape(row["caption"]) in page
    assert 0.0 <= row["bleu_4"] <= row["bleu_1"] <= 1.0
  bleu_4 = outputs.latest_bleu(str(tmp_path / "pipeline_root"))["bleu_4"]
  assert f"{bleu_4:.4f}" in page
  assert "Blessed: yes." in page


def test_training_leaves_curves_sample_captions_and_no_checkpoint(pipeline_run):
  tmp_path = pipeline_run[0]
  run_dir, = glob.glob(str(tmp_path / "pipeline_root/Trainer/model_run/*"))
  history = json.load(open(os.path.join(run_dir, "history.json")))
  epochs = history["epoch"]
  assert epochs == list(range(1, len(epochs) + 1)) and epochs
  assert len(history["val_loss"]) == len(epochs)
  with open(os.path.join(run_dir, "training_curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  samples = [json.loads(line) for line in
             open(os.path.join(run_dir, "sample_captions.jsonl"))]
  assert [s["epoch"] for s in samples] == epochs
  for sample_row in samples:
    assert set(sample_row["captions"]) == {"0.0", "0.5", "1.0"}
    assert all(len(c) == 2 for c in sample_row["captions"].values())
  # Finished training removes its backup checkpoint.
  assert glob.glob(str(tmp_path / "pipeline_root/Trainer/backup/*")) == []


def _trainer_args(tmp_path, name, backup_dir, epochs):
  root = tmp_path / "pipeline_root"
  config = config_lib.load(str(tmp_path / "config.yaml"))
  config.training.epochs = epochs
  config.training.steps_per_epoch = 6
  config.training.backup_dir = str(backup_dir)
  args = {
      "transformed_examples": glob.glob(
          str(root / "Transform/transformed_examples/*"))[0],
      "transform_graph": glob.glob(str(root / "Transform/transform_graph/*"))[0],
      "schema": glob.glob(str(root / "SchemaGen/schema/*"))[0],
      "model": str(tmp_path / name / "model"),
      "model_run": str(tmp_path / name / "model_run"),
      "custom_config": config.trainer_custom_config(),
      "train_steps": epochs * 6, "eval_steps": 1}
  path = tmp_path / f"{name}.json"
  path.write_text(json.dumps(args))
  return [sys.executable, os.path.join(REPO_ROOT, "tests", "helpers",
                                       "trainer_process.py"), str(path)]


def test_a_killed_training_resumes_from_its_last_checkpoint(pipeline_run):
  tmp_path = pipeline_run[0]
  epochs = 5
  backup = tmp_path / "backup"
  metadata = backup / "training_metadata.json"
  env = {**os.environ, "PYTHONPATH": REPO_ROOT,
         "TMPDIR": processes.killable_tmpdir(tmp_path)}
  first = subprocess.Popen(_trainer_args(tmp_path, "first", backup, epochs),
                           cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 600
  while not metadata.exists() and first.poll() is None:
    assert time.time() < deadline, "no checkpoint within 10 minutes"
    time.sleep(0.1)
  first.kill()  # SIGKILL: no cleanup of any kind
  log = first.communicate()[0]
  assert first.returncode == -9, log[-3000:]
  done = json.loads(metadata.read_text())["epoch"]
  assert 1 <= done < epochs

  second = subprocess.run(_trainer_args(tmp_path, "second", backup, epochs),
                          cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  out = second.stdout + second.stderr
  assert second.returncode == 0, out[-5000:]
  assert f"resuming after epoch {done}" in out
  trained = [int(m) for m in re.findall(rf"Epoch (\d+)/{epochs}\b", out)]
  assert trained == list(range(done + 1, epochs + 1))
  history = json.load(open(tmp_path / "second/model_run/history.json"))
  assert history["epoch"] == list(range(1, epochs + 1))
  assert not backup.exists()
  assert tf.saved_model.load(str(tmp_path / "second/model/Format-Serving"))


def test_the_decode_benchmark_compares_the_same_captions(pipeline_run):
  # Not a speed test: the benchmark stops unless the tutorial's loop, the
  # in-graph full-prefix decoder and the served decoders caption every image
  # alike with the pushed weights (read back into a Keras model), and the
  # beam captions equal this checkout's export's.
  tmp_path = pipeline_run[0]
  result = subprocess.run(
      [sys.executable, "benchmarks/decode.py", "--config",
       str(tmp_path / "config.yaml"), "--batch", "4", "--rounds", "1",
       "--full-prefix"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  table = [line.split("|")[1:-1] for line in result.stdout.splitlines()
           if re.match(r"\| [a-z]", line) and not line.startswith("| method")]
  methods = [(method.strip(), int(batch)) for method, batch, _, _ in table]
  assert methods == [("tutorial simple_gen", 1), ("full prefix", 1),
                     ("full prefix", 4), ("ours greedy (from_features)", 1),
                     ("ours greedy (from_features)", 4),
                     ("ours beam 3 (from_examples)", 1),
                     ("ours beam 3 (from_examples)", 4),
                     ("model greedy (from_features)", 1),
                     ("model greedy (from_features)", 4)]
  assert all(float(ms) > 0 for _, _, ms, _ in table)
