"""Code fingerprints (pipeline/fingerprint.py) and feature-cache provenance
(ingest/feature_cache.py): what TFX's cache key and the import of a
feature cache rely on."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from core import extractors
from ingest import feature_cache
from core.config import REPO_ROOT
from pipeline import fingerprint

MODULES = ("trainer.task", "trainer.preprocessing",
           "components.image_caption_example_gen")


def _fingerprints(code_root):
  """The fingerprints computed by a fresh interpreter over `code_root`."""
  script = ("import json; from pipeline import fingerprint as f; "
            f"print(json.dumps({{m: f.code_fingerprint(m) for m in {MODULES!r}}}))")
  result = subprocess.run([sys.executable, "-c", script], cwd=code_root,
                          env={**os.environ, "PYTHONPATH": str(code_root)},
                          capture_output=True, text=True, timeout=120,
                          check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_trainer_module_imports_the_model_code_and_not_the_pipeline():
  modules = fingerprint.project_modules("trainer.task")
  assert {"trainer.models.transformer", "trainer.export", "trainer.data",
          "core.extractors", "core.config"} <= set(modules)
  assert not any(m.startswith("pipeline") for m in modules)
  assert set(fingerprint.project_modules("trainer.preprocessing")) == {
      "trainer.preprocessing", "core", "core.features", "core.text"}


def test_editing_an_imported_file_changes_only_the_fingerprints_of_its_users(
    tmp_path):
  for package in fingerprint.PROJECT_PACKAGES:
    shutil.copytree(os.path.join(REPO_ROOT, package), tmp_path / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  before = _fingerprints(tmp_path)
  assert before == {m: fingerprint.code_fingerprint(m) for m in MODULES}
  with open(tmp_path / "trainer" / "models" / "transformer.py", "a") as f:
    f.write("# one more line\n")
  after = _fingerprints(tmp_path)
  assert after["trainer.task"] != before["trainer.task"]
  assert after["trainer.preprocessing"] == before["trainer.preprocessing"]
  assert (after["components.image_caption_example_gen"]
          == before["components.image_caption_example_gen"])


def test_an_unknown_module_is_an_error():
  with pytest.raises(ValueError, match="no project module 'trainer.nothing'"):
    fingerprint.code_fingerprint("trainer.nothing")


def test_a_file_checksum_is_of_its_bytes(tmp_path):
  path = tmp_path / "weights.h5"
  path.write_bytes(b"abc")
  # sha256("abc")
  assert fingerprint.file_checksum(str(path)) == (
      "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  assert fingerprint.file_checksum("imagenet") == "imagenet"
  assert fingerprint.file_checksum("none") == "none"


def _cache(tmp_path, **made):
  extractor_dir = tmp_path / "cache" / feature_cache.EXTRACTOR_DIR
  extractor_dir.mkdir(parents=True)
  (extractor_dir / "extractor.json").write_text(json.dumps(made))
  return str(tmp_path / "cache")


def test_a_cache_made_with_other_weights_is_refused_naming_both(tmp_path):
  weights = tmp_path / "mine.weights.h5"
  weights.write_bytes(b"my weights")
  expected = extractors.provenance("mobilenet_v2", str(weights), "float16",
                                      1.0, 128, 16)
  cache = _cache(tmp_path, **{**expected, "weights_checksum": "sha256:0123",
                              "weights": "/elsewhere/theirs.weights.h5"})
  with pytest.raises(feature_cache.CacheMismatchError) as error:
    feature_cache.check_provenance(cache, expected, str(weights))
  message = str(error.value)
  assert cache in message
  assert f"features.weights {weights}" in message
  assert "'sha256:0123' (weights /elsewhere/theirs.weights.h5)" in message
  assert expected["weights_checksum"] in message


def test_a_cache_made_with_the_same_features_is_accepted(tmp_path):
  expected = extractors.provenance("patches", "none", "float16", 1.0, 128,
                                      16)
  cache = _cache(tmp_path, **expected, weights="none")
  assert feature_cache.check_provenance(cache, expected, "none")[
      "extractor"] == "patches"


def test_a_folder_without_a_cache_or_checksum_is_refused(tmp_path):
  expected = extractors.provenance("patches", "none", "float16", 1.0, 128,
                                      16)
  with pytest.raises(feature_cache.CacheMismatchError,
                     match="is not a feature cache"):
    feature_cache.check_provenance(str(tmp_path), expected, "none")
  old = {k: v for k, v in expected.items() if k != "weights_checksum"}
  with pytest.raises(feature_cache.CacheMismatchError,
                     match="does not record its weights' checksum"):
    feature_cache.check_provenance(_cache(tmp_path, **old), expected, "none")
