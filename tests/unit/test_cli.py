import json
import os
import subprocess
import sys

import pytest

CAPTIONER = os.path.join(os.path.dirname(sys.executable), "captioner")


def _run(*args):
  return subprocess.run([CAPTIONER, *args], capture_output=True, text=True,
                        timeout=300)


def test_every_subcommand_has_help():
  top = _run("--help")
  assert top.returncode == 0
  commands = ["sample", "run", "caption", "caption-dataset", "cache-features",
              "bleu", "stage"]
  for command in commands:
    assert command in top.stdout
    result = _run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: captioner {command}" in result.stdout


def test_sample_writes_the_coco_layout(tmp_path):
  result = _run("sample", "--out", str(tmp_path), "--images", "10",
                "--seed", "4")
  assert result.returncode == 0, result.stderr
  assert "8 training and 2 eval images" in result.stdout
  with open(tmp_path / "annotations" / "captions_val2017.json") as f:
    coco = json.load(f)
  assert len(coco["images"]) == 2 and len(coco["annotations"]) == 10
  for image in coco["images"]:
    assert (tmp_path / "val2017" / image["file_name"]).exists()


def test_run_names_a_bad_config_key(tmp_path):
  config = tmp_path / "bad.yaml"
  config.write_text("training:\n  epochz: 3\n")
  result = _run("run", "--config", str(config))
  assert result.returncode == 2
  assert "'training.epochz'" in result.stderr
  assert "Traceback" not in result.stderr


def test_cache_features_names_a_wrong_weights_file_without_a_traceback(
    tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  weights = str(tmp_path / "mobilenet_v1.weights.h5")
  keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25,
                               input_shape=(224, 224, 3)).save_weights(weights)
  data = tmp_path / "data"
  assert _run("sample", "--out", str(data), "--images", "4").returncode == 0
  out = tmp_path / "out"
  result = _run("cache-features", "--dataset", "coco2017", "--annotations",
                str(data / "annotations" / "captions_train2017.json"),
                "--images", str(data / "train2017"),
                "--extractor", "mobilenet_v2", "--alpha", "0.35",
                "--weights", weights, "--out", str(out))
  assert result.returncode == 2, result.stdout + result.stderr
  assert (f"captioner cache-features: error: features.weights '{weights}' "
          "does not fit extractor 'mobilenet_v2'") in result.stderr
  assert "Traceback" not in result.stderr
  assert not (out / "summary.json").exists()
