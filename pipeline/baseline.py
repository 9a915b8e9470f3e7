"""The Evaluator's baseline: the latest blessed model other than the candidate.

TFX's LatestBlessedModelStrategy returns the latest blessed model, whichever
it is. With caching that breaks a rerun: the Trainer's output is reused, so
the candidate is the model that the first run blessed, the Resolver now
hands that same model over as the baseline, the Evaluator's inputs differ
from the first run's, and it runs again to compare the model with itself.

LatestBlessedOtherModelStrategy also takes the Trainer's output of this run
(`candidate`) and skips it: a rerun then resolves the same baseline as the
run it repeats, and the Evaluator and Pusher are reused from the cache. A
newly trained model is compared with the latest blessed one, as before.

A blessed model trained on other features (another extractor, weights or
dtype: its `assets.extra/features.json`, which the Trainer writes) cannot
read this run's eval examples, so it is no baseline either: the candidate
is then judged by the value threshold alone, as on a first run.

Vertex AI Pipelines runs only TFX's own two strategies, so pipeline/vertex.py
keeps LatestBlessedModelStrategy (its rerun evaluates again).
"""

import json
import os
from typing import Dict, List, Optional

import tensorflow as tf
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.utils import path_utils

from core import extractors

# Keys of the Resolver's channels.
MODEL_KEY = "model"
MODEL_BLESSING_KEY = "model_blessing"
CANDIDATE_KEY = "candidate"
# Custom properties the Evaluator writes on a ModelBlessing
# (tfx.components.evaluator.constants).
_CURRENT_MODEL_ID = "current_model_id"
_BLESSED = "blessed"


def features_of(model: types.Artifact) -> Optional[dict]:
  """The provenance of the features a Trainer model was trained on, or None
  (a model exported before it was recorded)."""
  path = os.path.join(path_utils.serving_model_path(model.uri),
                      "assets.extra", extractors.PROVENANCE_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


class LatestBlessedOtherModelStrategy(resolver.ResolverStrategy):
  """{model, model_blessing}: the newest blessed model that is not one of
  `candidate` and was trained on the same features, with its blessing
  (both empty when there is none)."""

  def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                        ) -> Optional[Dict[str, List[types.Artifact]]]:
    del store  # everything needed is in the channels
    candidates = list(input_dict.get(CANDIDATE_KEY, []))
    excluded = {model.id for model in candidates}
    blessings = {
        blessing.get_int_custom_property(_CURRENT_MODEL_ID): blessing
        for blessing in input_dict.get(MODEL_BLESSING_KEY, [])
        if blessing.get_int_custom_property(_BLESSED) == 1}
    features = [features_of(model) for model in candidates]
    result = {MODEL_KEY: [], MODEL_BLESSING_KEY: [], CANDIDATE_KEY: candidates}
    for model in sorted(input_dict.get(MODEL_KEY, []), key=lambda a: a.id,
                        reverse=True):
      if (model.id in blessings and model.id not in excluded
          and features_of(model) in features):
        result[MODEL_KEY] = [model]
        result[MODEL_BLESSING_KEY] = [blessings[model.id]]
        break
    return result
