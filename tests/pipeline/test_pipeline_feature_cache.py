"""The pipeline on a `captioner cache-features` output: ImportExampleGen in
place of ImageCaptionExampleGen, no image decoded; a cache of another
extractor than the config's is refused before any component runs.

(Apart from test_pipeline_cache.py so that `make test`'s two workers can run
them at the same time.)
"""

import os
import re
import subprocess
import sys

import pytest

from ingest import sample
from core.config import REPO_ROOT
from pipeline import run_record
from tests.helpers.pipelines import ALL_COMPONENTS as ALL
from tests.helpers.pipelines import write_pipeline_config

CAPTIONER = os.path.join(os.path.dirname(sys.executable), "captioner")


def _command(config):
  return [CAPTIONER, "run", "--config", config], {**os.environ,
                                                   "PYTHONPATH": REPO_ROOT}


@pytest.fixture(scope="module")
def feature_cache_dir(tmp_path_factory):
  """`captioner cache-features` over a sample in the COCO 2017 layout."""
  tmp_path = tmp_path_factory.mktemp("feature_cache")
  data_root = tmp_path / "data"
  sample.generate(str(data_root), num_images=30, seed=4)
  out = tmp_path / "cache"
  result = subprocess.run(
      [CAPTIONER, "cache-features", "--dataset", "coco2017",
       "--annotations", str(data_root / "annotations/captions_train2017.json"),
       "--annotations", str(data_root / "annotations/captions_val2017.json"),
       "--images", str(data_root / "train2017"),
       "--images", str(data_root / "val2017"),
       "--extractor", "patches", "--weights", "none", "--out", str(out),
       "--direct_running_mode=in_memory"],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
  return tmp_path, data_root, out


def _cache_config(tmp_path, data_root, cache, name, features=""):
  return write_pipeline_config(
      tmp_path / f"config_{name}.yaml", tmp_path / name, data_root,
      f"import-{name}", model="{num_layers: 1, units: 64, num_heads: 1}",
      training="{epochs: 1, steps_per_epoch: 5, eval_steps: 1, "
      "batch_size: 16}", bleu4_threshold=0.0,
      extra=(f"data: {{root: {data_root}, feature_cache: {cache}, "
             "feature_cache_train: train2017, feature_cache_eval: val2017}\n"
             + features))


def test_the_pipeline_trains_from_a_feature_cache_without_extracting(
    feature_cache_dir):
  tmp_path, data_root, cache = feature_cache_dir
  config = _cache_config(tmp_path, data_root, cache, "same")
  args, env = _command(config)
  result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
  record = run_record.latest_run(str(tmp_path / "same" / "metadata.db"),
                                 "import-same")
  assert "ImageCaptionExampleGen" not in record.nodes
  assert record.ran() == sorted(
      "ImportExampleGen" if n == "ImageCaptionExampleGen" else n for n in ALL)
  assert re.search(r"\[run\] examples \[train2017\] \d+ images processed",
                   result.stdout)
  assert re.search(r"Caption: \w+", result.stdout)


def test_a_feature_cache_of_another_extractor_is_refused_naming_both(
    feature_cache_dir):
  tmp_path, data_root, cache = feature_cache_dir
  config = _cache_config(
      tmp_path, data_root, cache, "other",
      features="features: {extractor: mobilenet, alpha: 0.25}\n")
  args, env = _command(config)
  result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 2, result.stdout + result.stderr
  assert "extractor: features.* gives 'mobilenet'" in result.stderr
  assert "made with 'patches'" in result.stderr
  assert str(cache) in result.stderr
  assert not (tmp_path / "other" / "pipeline_root").exists()
