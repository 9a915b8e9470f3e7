"""The Evaluator's baseline (pipeline/baseline.py): the latest blessed model
other than the candidate, trained on the same features."""

import json
import os

from tfx.types import standard_artifacts

from core import extractors
from pipeline import baseline

PATCHES = extractors.provenance("patches", "none", "float16", 1.0, 128, 16)
MOBILENET = extractors.provenance("mobilenet", "none", "float16", 0.25, 128,
                                  16)


def _model(tmp_path, model_id, features):
  model = standard_artifacts.Model()
  model.id = model_id
  model.uri = str(tmp_path / f"model-{model_id}")
  extra = os.path.join(model.uri, "Format-Serving", "assets.extra")
  os.makedirs(extra)
  with open(os.path.join(extra, extractors.PROVENANCE_FILE), "w") as f:
    json.dump(features, f)
  return model


def _blessing(model, blessed=True):
  blessing = standard_artifacts.ModelBlessing()
  blessing.set_int_custom_property("current_model_id", model.id)
  blessing.set_int_custom_property("blessed", int(blessed))
  return blessing


def _resolve(models, blessings, candidate):
  return baseline.LatestBlessedOtherModelStrategy().resolve_artifacts(
      None, {"model": models, "model_blessing": blessings,
             "candidate": [candidate]})


def test_the_candidate_itself_is_never_its_baseline(tmp_path):
  older, candidate = _model(tmp_path, 1, PATCHES), _model(tmp_path, 2, PATCHES)
  result = _resolve([older, candidate], [_blessing(older),
                                         _blessing(candidate)], candidate)
  assert [m.id for m in result["model"]] == [1]
  assert result["model_blessing"][0].get_int_custom_property(
      "current_model_id") == 1
  # Back to model 1's config (reused from the cache): compared with model 2.
  result = _resolve([older, candidate], [_blessing(older),
                                         _blessing(candidate)], older)
  assert [m.id for m in result["model"]] == [2]
  assert _resolve([older], [_blessing(older)], older)["model"] == []


def test_the_newest_blessed_model_wins_and_unblessed_ones_are_skipped(
    tmp_path):
  models = [_model(tmp_path, i, PATCHES) for i in (1, 2, 3, 4)]
  blessings = [_blessing(models[0]), _blessing(models[1]),
               _blessing(models[2], blessed=False)]
  assert [m.id for m in _resolve(models, blessings, models[3])["model"]] == [2]


def test_a_model_trained_on_other_features_is_no_baseline(tmp_path):
  old = _model(tmp_path, 1, PATCHES)
  candidate = _model(tmp_path, 2, MOBILENET)
  result = _resolve([old, candidate], [_blessing(old)], candidate)
  assert result["model"] == [] and result["model_blessing"] == []
