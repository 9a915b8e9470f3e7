"""The Evaluator's metrics and EvalConfig: coco-caption corpus BLEU in TFMA.

The BLEU definition itself is `core.scoring` (pure Python, no TensorFlow),
the one the command line uses too. This module adds the TFMA metric
`CorpusBleu`, which pools the per-example `core.scoring.BleuStatistics` over
the eval split, and `make_eval_config`, the EvalConfig `create_pipeline()`
gives the Evaluator. Example weights are ignored: BLEU is a corpus statistic,
as in TFMA's Bleu.

The Evaluator's TFMA EvalConfig: corpus BLEU on raw eval examples.

The standard TFX Evaluator reads the raw tf.Examples of ExampleGen's eval
split and runs the trained model's `from_examples` signature on them. Metrics
are coco-caption corpus BLEU-1..4 (`CorpusBleu` below), over the whole eval
split (overall slice only). The candidate is blessed only if
  * BLEU-4 >= `bleu4_threshold` (value threshold), and
  * BLEU-4 >= BLEU-4 of the latest blessed model (change threshold, absolute
    -1e-10 so that an equal score, e.g. the same model, still passes).
With no blessed model yet (first run) TFX drops the change threshold
(`update_eval_config_with_defaults(..., rubber_stamp=True)` in its executor);
with one, it copies our single unnamed ModelSpec into "candidate" and
"baseline" specs, which is why the spec below has no name and no is_baseline.

How TFMA 0.52 feeds the signature (tensorflow_model_analysis/utils/
model_util.py, ModelSignaturesDoFn._batch_reducible_process and get_inputs):
  * `get_input_specs(model, signature_name)` reads the signature's inputs.
    If there is exactly one, of dtype tf.string, and its name is NOT a feature
    of the decoded examples, no features are fed:
        single_input.dtype == tf.string
        and find_input_name_in_features(set(features), single_input_name)
        is None
    and the raw records are passed positionally as a 1-D batch:
        serialized_examples = serialized_examples.flatten()
        ...
        outputs = signature(tf.constant(inputs, dtype=tf.string))
    So the contract is: one input, tf.string, shape [None] (its name is free,
    `examples` here, but must not be a feature name such as `captions` or
    `image_features`, or TFMA would feed that feature instead).
  * Every output must have the batch size as first dimension
    (`_check_shape`); `caption` is tf.string [None]. With a single output
    TFMA stores the array itself as the prediction (prefer_dict_outputs=
    False); with several, ModelSpec.prediction_key="caption" selects it.
  * A SavedModel without keras_metadata.pb is TF_GENERIC
    (`get_model_type`); TFX's Evaluator then loads
    `path_utils.serving_model_path(model.uri)`.
  * Labels: ModelSpec.label_key="captions" makes TFMA's LabelsExtractor take
    the raw `captions` feature (all references of the image, any count);
    each example's metric inputs then hold a 1-D bytes array of them.
"""

from __future__ import annotations

import collections.abc
import json
from typing import Any, Iterable, Optional

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.proto import config_pb2

from core import features
from core import scoring

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
#   MetricConfig(class_name="CorpusBleu", module="components.caption_metrics",
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

  def create_accumulator(self) -> scoring.BleuStatistics:
    return scoring.BleuStatistics()

  def add_input(self, accumulator: scoring.BleuStatistics,
                element: tfma.metrics.StandardMetricInputs,
                ) -> scoring.BleuStatistics:
    references, hypothesis = references_and_hypothesis(
        element, self._eval_config, self._model_name, self._output_name)
    return accumulator + scoring.sentence_statistics(hypothesis, references)

  def merge_accumulators(
      self, accumulators: Iterable[scoring.BleuStatistics],
  ) -> scoring.BleuStatistics:
    return scoring.pool(accumulators)

  def extract_output(self, accumulator: scoring.BleuStatistics) -> dict:
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
    return {bleu_key: scoring.bleu_from_statistics(metrics[statistics_key],
                                                   order)}

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

  def __init__(self, order: int = scoring.MAX_ORDER,
               name: Optional[str] = None):
    if order not in scoring.ORDERS:
      raise ValueError(
          f"BLEU order must be one of {scoring.ORDERS}, got {order}")
    super().__init__(
        tfma.metrics.merge_per_key_computations(_corpus_bleu_computations),
        order=order,
        name=name or scoring.metric_name(order))


# ---------------------------------------------------------------------------
# The Evaluator's EvalConfig.
# ---------------------------------------------------------------------------
# A candidate may score this much below the baseline and still be blessed:
# zero, up to float noise.
CHANGE_TOLERANCE = 1e-10


def _bleu4_threshold(bleu4_threshold: float) -> config_pb2.MetricThreshold:
  return config_pb2.MetricThreshold(
      value_threshold=config_pb2.GenericValueThreshold(
          lower_bound={"value": bleu4_threshold}),
      change_threshold=config_pb2.GenericChangeThreshold(
          direction=config_pb2.MetricDirection.HIGHER_IS_BETTER,
          absolute={"value": -CHANGE_TOLERANCE}))


def make_eval_config(bleu4_threshold: float,
                     signature_name: str = features.FROM_EXAMPLES,
                     ) -> config_pb2.EvalConfig:
  """EvalConfig for the Evaluator: BLEU-1..4, gating on BLEU-4.

  Args:
    bleu4_threshold: Lowest corpus BLEU-4 (in [0, 1]) that can be blessed.
    signature_name: Signature taking serialized raw tf.Examples (`examples`,
      tf.string [None]) and returning {"caption": tf.string [None]}.

  Returns:
    A tfma.EvalConfig (config_pb2.EvalConfig: TFMA 0.52 does not export
    `tfma.EvalConfig` itself unless TFX has been imported) with one
    unnamed ModelSpec, the overall slice, metrics bleu_1..bleu_4 and, on
    bleu_4, a value threshold (lower bound `bleu4_threshold`) and a change
    threshold (not lower than the baseline model's bleu_4).
  """
  metrics = [
      metric_config(
          order,
          threshold=_bleu4_threshold(bleu4_threshold)
          if order == scoring.MAX_ORDER else None)
      for order in scoring.ORDERS
  ]
  return config_pb2.EvalConfig(
      model_specs=[
          config_pb2.ModelSpec(
              signature_name=signature_name,
              # All reference captions of the image, any count.
              label_key=features.CAPTIONS,
              prediction_key=features.CAPTION)
      ],
      slicing_specs=[config_pb2.SlicingSpec()],
      metrics_specs=[config_pb2.MetricsSpec(metrics=metrics)])
