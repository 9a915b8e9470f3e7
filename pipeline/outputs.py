"""What a local run left for the report at its end: the Evaluator's BLEU,
the examples' counts (ExampleGen's, or those of the imported feature
cache) and the first eval image with its reference captions.

Each reader takes the artifact folder of this run when known
(`run_record.RunRecord.output`: with caching it need not be the newest
folder) and falls back to the newest one under the pipeline root.
"""

import glob
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems
import tensorflow as tf

from components import caption_evaluator
from core import config as config_lib
from ingest import feature_cache
from ingest import readers
from pipeline import prepare
from pipeline import run_record

EXAMPLE_GEN = "ImageCaptionExampleGen"
EVALUATOR = "Evaluator"


def latest_candidate_metrics(pipeline_root: str,
                             evaluation: Optional[str] = None
                             ) -> Dict[str, float]:
  """Every corpus metric of the candidate in the newest Evaluator run under
  the pipeline root, or in the `evaluation` artifact folder given ({} if
  there is none)."""
  runs = glob.glob(os.path.join(pipeline_root, EVALUATOR, "evaluation", "*"))
  if evaluation is None and not runs:
    return {}
  newest = evaluation or max(runs, key=lambda p: int(os.path.basename(p)))
  metrics = caption_evaluator.corpus_metrics(newest)
  return metrics.get("candidate", metrics.get("", {}))


def latest_bleu(pipeline_root: str,
                evaluation: Optional[str] = None) -> Dict[str, float]:
  """BLEU-1..4 of latest_candidate_metrics."""
  return {k: v for k, v in latest_candidate_metrics(
      pipeline_root, evaluation).items() if k.startswith("bleu_")}


def example_gen_summary(pipeline_root: str,
                        examples: Optional[str] = None) -> Dict[str, Any]:
  """The newest ExampleGen run's counts (or those of the `examples`
  artifact folder given): split -> processed, skipped."""
  if examples is not None:
    runs = glob.glob(os.path.join(examples, feature_cache.SUMMARY_FILE))
  else:
    runs = glob.glob(os.path.join(pipeline_root, EXAMPLE_GEN, "examples",
                                  "*", feature_cache.SUMMARY_FILE))
  if not runs:
    return {}
  newest = max(runs, key=lambda p: int(p.split(os.sep)[-2]))
  with open(newest) as f:
    return {"path": os.path.dirname(newest), "splits": json.load(f)}


def imported_cache_summary(cache_dir: str) -> Dict[str, Any]:
  """The counts of a `captioner cache-features` output the pipeline
  imported: split -> processed, skipped."""
  path = os.path.join(cache_dir, feature_cache.SUMMARY_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return {"path": cache_dir, "splits": json.load(f)["splits"]}


def examples_summary(config: config_lib.PipelineConfig,
                     record: Optional[run_record.RunRecord]) -> Dict[str, Any]:
  """The counts of the examples the run trained on: the imported cache's
  with `data.feature_cache`, else ExampleGen's (of run `record`, if known);
  {} when there are none."""
  if config.data.feature_cache:
    return imported_cache_summary(config.data.feature_cache)
  return example_gen_summary(
      config.resolve(config.pipeline_root),
      record.output(EXAMPLE_GEN, "examples") if record else None)


def first_eval_image(config: config_lib.PipelineConfig,
                     data_root: str) -> Tuple[Optional[str], List[str]]:
  """(path, references) of the first eval image on disk, read by the
  pipeline's own readers (any dataset layout, local or gs://)."""
  try:
    for record in readers.read(prepare.sources(config, data_root)["eval"]):
      if (record["image_id"] >= 0 and not record["problem"]
          and FileSystems.exists(record["path"])):
        return record["path"], record["captions"]
  except (OSError, ValueError):
    if not config.data.feature_cache:
      raise
    # Trained from a feature cache: the images need not be here.
  return None, []
