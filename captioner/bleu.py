"""coco-caption corpus BLEU-1..4 and the TFMA metric that the Evaluator uses.

The BLEU definition itself is `captioner.bleu_score` (pure Python, no
TensorFlow); it is re-exported here, so `bleu.corpus_bleu` etc. are the same
objects. This module adds the TFMA metric `CorpusBleu`, which pools the
per-example `BleuStatistics` over the eval split.

Example weights are ignored: BLEU is a corpus statistic, as in TFMA's Bleu.
"""

from __future__ import annotations

import collections.abc
import json
from typing import Any, Iterable, Optional

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.proto import config_pb2

# Re-exported: the one BLEU definition.
from captioner.bleu_score import BleuStatistics  # pylint: disable=unused-import
from captioner.bleu_score import bleu_from_statistics
from captioner.bleu_score import corpus_bleu  # pylint: disable=unused-import
from captioner.bleu_score import corpus_statistics  # pylint: disable=unused-import
from captioner.bleu_score import MAX_ORDER
from captioner.bleu_score import metric_name
from captioner.bleu_score import ORDERS
from captioner.bleu_score import pool
from captioner.bleu_score import scores_from_statistics  # pylint: disable=unused-import
from captioner.bleu_score import sentence_statistics
from captioner.bleu_score import tokenized  # pylint: disable=unused-import

# Name of the TFMA metric class, for MetricConfig.class_name / module.
METRIC_CLASS_NAME = "CorpusBleu"
METRIC_MODULE = __name__

# Private (leading "_") TFMA key of the pooled statistics: TFMA drops private
# metrics from its output, and computes this one only once for all orders.
_STATISTICS_METRIC_NAME = "_corpus_bleu_statistics"


# ---------------------------------------------------------------------------
# TFMA metric.
#
# In an EvalConfig (TFX passes it as JSON, so by class_name + module):
#   MetricConfig(class_name="CorpusBleu", module="captioner.bleu",
#                config='{"order": 4}')
# One instance yields one plain float metric, named "bleu_<order>" unless a
# name is given. One instance per order (rather than one yielding all four)
# because TFMA binds MetricConfig.threshold to the key named like the
# instance; all instances share one pooled-statistics computation.
# ---------------------------------------------------------------------------


def metric_config(
    order: int,
    threshold: Optional[config_pb2.MetricThreshold] = None,
) -> config_pb2.MetricConfig:
  """tfma MetricConfig for the BLEU-`order` metric, optionally thresholded."""
  config = config_pb2.MetricConfig(
      class_name=METRIC_CLASS_NAME, module=METRIC_MODULE,
      config=json.dumps({"order": order}))
  if threshold is not None:
    config.threshold.CopyFrom(threshold)
  return config


def _decode(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _strings(value: Any) -> list:
  """The strings held by a TFMA label/prediction value of one example.

  TFMA 0.52 decodes the variable-length `captions` feature as a VarLen tensor
  and hands each example its row as a 1-D array; with a schema that declares
  it sparse, the example's value is a SparseTensorValue, whose `.values` are
  the strings.
  """
  if value is None:
    return []
  if not isinstance(value, np.ndarray) and hasattr(value, "values"):
    value = value.values
  return [_decode(v) for v in np.asarray(value, dtype=object).ravel()]


def _lookup(value: Any, *keys: str) -> Any:
  """Descends into dicts keyed by these names, skipping absent ones."""
  for key in keys:
    if key and isinstance(value, collections.abc.Mapping) and key in value:
      value = value[key]
  return value


def _model_spec(eval_config: Optional[config_pb2.EvalConfig],
                model_name: str) -> Optional[config_pb2.ModelSpec]:
  # As in tfma.metrics.metric_util: a single model is always named "".
  if eval_config is None:
    return None
  for spec in eval_config.model_specs:
    name = spec.name if len(eval_config.model_specs) > 1 else ""
    if name == model_name:
      return spec
  return None


def references_and_hypothesis(
    inputs: tfma.metrics.StandardMetricInputs,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_name: str = "",
    output_name: str = "") -> tuple:
  """(reference captions, generated caption) of one example's metric inputs.

  Follows tfma.metrics.metric_util.to_label_prediction_example_weight's
  lookups (label_key, model name, output name, prediction_key), but keeps
  strings and variable-length labels, which that function cannot handle.
  """
  spec = _model_spec(eval_config, model_name)
  label_key = spec.label_key if spec else ""
  prediction_key = spec.prediction_key if spec else ""
  label = _lookup(inputs.label, label_key, model_name, output_name)
  prediction = _lookup(inputs.prediction, model_name, output_name,
                       prediction_key)
  if isinstance(label, collections.abc.Mapping) or isinstance(
      prediction, collections.abc.Mapping):
    raise ValueError(
        "CorpusBleu needs ModelSpec.label_key (the reference captions feature)"
        " and ModelSpec.prediction_key (the generated caption output); got "
        f"label={label!r}, prediction={prediction!r}")
  hypotheses = _strings(prediction)
  if len(hypotheses) != 1:
    raise ValueError(
        f"expected one generated caption per example, got {hypotheses!r}")
  return _strings(label), hypotheses[0]


class _BleuStatisticsCombiner(beam.CombineFn):
  """Pools per-example BleuStatistics; outputs them under a private key."""

  def __init__(self, key: tfma.metrics.MetricKey,
               eval_config: Optional[config_pb2.EvalConfig],
               model_name: str, output_name: str):
    self._key = key
    self._eval_config = eval_config
    self._model_name = model_name
    self._output_name = output_name

  def create_accumulator(self) -> BleuStatistics:
    return BleuStatistics()

  def add_input(self, accumulator: BleuStatistics,
                element: tfma.metrics.StandardMetricInputs) -> BleuStatistics:
    references, hypothesis = references_and_hypothesis(
        element, self._eval_config, self._model_name, self._output_name)
    return accumulator + sentence_statistics(hypothesis, references)

  def merge_accumulators(
      self, accumulators: Iterable[BleuStatistics]) -> BleuStatistics:
    return pool(accumulators)

  def extract_output(self, accumulator: BleuStatistics) -> dict:
    return {self._key: accumulator}


def _corpus_bleu_computations(
    name: str,
    order: int,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_name: str = "",
    output_name: str = "",
    example_weighted: bool = False) -> list:
  """Shared statistics computation + the BLEU-`order` derived from it."""
  statistics_key = tfma.metrics.MetricKey(
      name=_STATISTICS_METRIC_NAME, model_name=model_name,
      output_name=output_name, example_weighted=example_weighted)
  bleu_key = tfma.metrics.MetricKey(
      name=name, model_name=model_name, output_name=output_name,
      example_weighted=example_weighted)

  def bleu_from_pooled(metrics: dict) -> dict:
    return {bleu_key: bleu_from_statistics(metrics[statistics_key], order)}

  return [
      tfma.metrics.MetricComputation(
          keys=[statistics_key],
          preprocessors=None,  # Standard inputs: labels and predictions.
          combiner=_BleuStatisticsCombiner(
              statistics_key, eval_config, model_name, output_name)),
      tfma.metrics.DerivedMetricComputation(
          keys=[bleu_key], result=bleu_from_pooled),
  ]


class CorpusBleu(tfma.metrics.Metric):
  """TFMA metric: coco-caption corpus BLEU-`order` as a plain float.

  Label: ModelSpec.label_key, the reference captions (bytes list, any count).
  Prediction: ModelSpec.prediction_key, one generated caption per example.
  """

  def __init__(self, order: int = MAX_ORDER, name: Optional[str] = None):
    if order not in ORDERS:
      raise ValueError(f"BLEU order must be one of {ORDERS}, got {order}")
    super().__init__(
        tfma.metrics.merge_per_key_computations(_corpus_bleu_computations),
        order=order,
        name=name or metric_name(order))
