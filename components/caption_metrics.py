"""The Evaluator's metrics and EvalConfig: coco-caption's metrics in TFMA.

The metric definitions are `core.scoring` (pure Python, no TensorFlow), the
ones `captioner bleu` uses too: BLEU-1..4, CIDEr-D and ROUGE-L on coco-
caption's PTB tokens. This module adds the TFMA metrics `CorpusBleu`,
`CiderD` and `RougeL`, derived from one shared combiner that pools
`core.scoring.CaptionStatistics` over the eval split (each example is one
image: its tokenized caption and references; the BLEU counts are pooled as
they come, CIDEr-D's document frequencies are those of all the examples the
accumulator holds, i.e. of the slice), and `make_eval_config`, the
EvalConfig `create_pipeline()` gives the Evaluator. Example weights are
ignored: these are corpus statistics, as in TFMA's Bleu.

The Evaluator's TFMA EvalConfig: the metrics on raw eval examples.

The standard TFX Evaluator reads the raw tf.Examples of ExampleGen's eval
split and runs the trained model's `from_cached_features` signature on
their `image_features` (`from_examples` for a model exported before it
existed: caption_evaluator.py picks). Metrics
are bleu_1..bleu_4, cider_d and rouge_l, plain floats, over the whole eval
split (overall slice only). The candidate is blessed only if, for the gate
metric (`evaluation.gate_metric`: bleu_4 or cider_d) alone,
  * metric >= its bar (value threshold), and
  * metric >= the same metric of the latest blessed model (change threshold,
    absolute -1e-10 so that an equal score, e.g. the same model, still
    passes).
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
    So a signature of serialized examples (`from_examples`) has one input,
    tf.string, shape [None], whose name is not a feature name.
    But that positional call first fails to bind to the signature (a
    signature takes keyword arguments only) and only then takes the flat
    path, and the failure's message formats the whole batch: for Flickr8k's
    7x7x1280 float16 grids, a 37 MB string for 100 examples, 0.76 s per
    call (BENCHMARKS.md, "Decoding", run 12). So the Evaluator's signature
    takes the feature itself: one input named `image_features`, tf.string
    [None], which TFMA finds among the decoded features and passes by name,
    `signature(**inputs)`, one bytes value per example.
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
from typing import Any, Callable, Iterable, Optional

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.proto import config_pb2

from core import features
from core import scoring

# Names of the TFMA metric classes, for MetricConfig.class_name / module.
METRIC_CLASS_NAME = "CorpusBleu"
CIDER_D_CLASS_NAME = "CiderD"
ROUGE_L_CLASS_NAME = "RougeL"
METRIC_MODULE = __name__

# Private (leading "_") TFMA key of the pooled statistics: TFMA drops private
# metrics from its output, and computes this one only once for all metrics.
_STATISTICS_METRIC_NAME = "_caption_statistics"


# ---------------------------------------------------------------------------
# TFMA metric.
#
# In an EvalConfig (TFX passes it as JSON, so by class_name + module):
#   MetricConfig(class_name="CorpusBleu", module="components.caption_metrics",
#                config='{"order": 4}')
#   MetricConfig(class_name="CiderD", module="components.caption_metrics")
#   MetricConfig(class_name="RougeL", module="components.caption_metrics")
# One instance yields one plain float metric, named "bleu_<order>",
# "cider_d" or "rouge_l" unless a name is given. One instance per metric
# (rather than one yielding all six) because TFMA binds
# MetricConfig.threshold to the key named like the instance; all instances
# share one pooled-statistics computation (TFMA de-duplicates computations
# by combiner class and keys).
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


def named_metric_config(
    name: str,
    threshold: Optional[config_pb2.MetricThreshold] = None,
) -> config_pb2.MetricConfig:
  """tfma MetricConfig of the metric called `name` (one of
  core.scoring.METRIC_NAMES), optionally thresholded."""
  if name == scoring.CIDER_D:
    config = config_pb2.MetricConfig(class_name=CIDER_D_CLASS_NAME,
                                     module=METRIC_MODULE)
  elif name == scoring.ROUGE_L:
    config = config_pb2.MetricConfig(class_name=ROUGE_L_CLASS_NAME,
                                     module=METRIC_MODULE)
  else:
    orders = {scoring.metric_name(n): n for n in scoring.ORDERS}
    if name not in orders:
      raise ValueError(f"unknown caption metric {name!r}; known: "
                       f"{', '.join(scoring.METRIC_NAMES)}")
    return metric_config(orders[name], threshold)
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
        "Caption metrics need ModelSpec.label_key (the reference captions feature)"
        " and ModelSpec.prediction_key (the generated caption output); got "
        f"label={label!r}, prediction={prediction!r}")
  hypotheses = _strings(prediction)
  if len(hypotheses) != 1:
    raise ValueError(
        f"expected one generated caption per example, got {hypotheses!r}")
  return _strings(label), hypotheses[0]


class _CaptionStatisticsCombiner(beam.CombineFn):
  """Pools per-example CaptionStatistics; outputs them under a private key.

  The accumulator holds the pooled BLEU counts and each example's tokenized
  captions (tokenized once, here, for all six metrics); merging
  concatenates them, so CIDEr-D's document frequencies cover every example
  of the slice however Beam splits and merges the work.
  """

  def __init__(self, key: tfma.metrics.MetricKey,
               eval_config: Optional[config_pb2.EvalConfig],
               model_name: str, output_name: str):
    self._key = key
    self._eval_config = eval_config
    self._model_name = model_name
    self._output_name = output_name

  def create_accumulator(self) -> scoring.CaptionStatistics:
    return scoring.CaptionStatistics()

  def add_input(self, accumulator: scoring.CaptionStatistics,
                element: tfma.metrics.StandardMetricInputs,
                ) -> scoring.CaptionStatistics:
    references, hypothesis = references_and_hypothesis(
        element, self._eval_config, self._model_name, self._output_name)
    return accumulator.add(hypothesis, references)

  def merge_accumulators(
      self, accumulators: Iterable[scoring.CaptionStatistics],
  ) -> scoring.CaptionStatistics:
    merged = scoring.CaptionStatistics()
    for accumulator in accumulators:
      merged.merge(accumulator)
    return merged

  def extract_output(self, accumulator: scoring.CaptionStatistics) -> dict:
    return {self._key: accumulator}


def _caption_metric_computations(
    name: str,
    value_of: Callable[[scoring.CaptionStatistics], float],
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_name: str = "",
    output_name: str = "",
    example_weighted: bool = False) -> list:
  """Shared statistics computation + the metric `name` derived from it."""
  statistics_key = tfma.metrics.MetricKey(
      name=_STATISTICS_METRIC_NAME, model_name=model_name,
      output_name=output_name, example_weighted=example_weighted)
  metric_key = tfma.metrics.MetricKey(
      name=name, model_name=model_name, output_name=output_name,
      example_weighted=example_weighted)

  def from_pooled(metrics: dict) -> dict:
    return {metric_key: float(value_of(metrics[statistics_key]))}

  return [
      tfma.metrics.MetricComputation(
          keys=[statistics_key],
          preprocessors=None,  # Standard inputs: labels and predictions.
          combiner=_CaptionStatisticsCombiner(
              statistics_key, eval_config, model_name, output_name)),
      tfma.metrics.DerivedMetricComputation(
          keys=[metric_key], result=from_pooled),
  ]


# TFMA passes eval_config, model_name, ... only to the parameters a
# create-computations function names (inspect.getfullargspec), hence the
# explicit signatures.
def _corpus_bleu_computations(
    name: str, order: int,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_name: str = "", output_name: str = "",
    example_weighted: bool = False) -> list:
  return _caption_metric_computations(
      name, lambda s: scoring.bleu_from_statistics(s.bleu, order),
      eval_config, model_name, output_name, example_weighted)


def _cider_d_computations(
    name: str,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_name: str = "", output_name: str = "",
    example_weighted: bool = False) -> list:
  return _caption_metric_computations(
      name, scoring.CaptionStatistics.cider_d,
      eval_config, model_name, output_name, example_weighted)


def _rouge_l_computations(
    name: str,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_name: str = "", output_name: str = "",
    example_weighted: bool = False) -> list:
  return _caption_metric_computations(
      name, scoring.CaptionStatistics.rouge_l,
      eval_config, model_name, output_name, example_weighted)


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


class CiderD(tfma.metrics.Metric):
  """TFMA metric: coco-caption's corpus CIDEr-D as a plain float.

  Document frequencies from the references of the examples evaluated (the
  slice; the eval split for the overall slice), as coco-caption takes them
  from the images it scores. Inputs as CorpusBleu's.
  """

  def __init__(self, name: Optional[str] = None):
    super().__init__(
        tfma.metrics.merge_per_key_computations(_cider_d_computations),
        name=name or scoring.CIDER_D)


class RougeL(tfma.metrics.Metric):
  """TFMA metric: coco-caption's ROUGE-L (mean over images), a plain float.

  Inputs as CorpusBleu's.
  """

  def __init__(self, name: Optional[str] = None):
    super().__init__(
        tfma.metrics.merge_per_key_computations(_rouge_l_computations),
        name=name or scoring.ROUGE_L)


# ---------------------------------------------------------------------------
# The Evaluator's EvalConfig.
# ---------------------------------------------------------------------------
# A candidate may score this much below the baseline and still be blessed:
# zero, up to float noise.
CHANGE_TOLERANCE = 1e-10


# The metrics a candidate can be gated on (core/config.py's GATE_METRICS).
GATE_METRICS = (scoring.metric_name(scoring.MAX_ORDER), scoring.CIDER_D)


def gate_threshold(bar: float) -> config_pb2.MetricThreshold:
  """Value threshold (>= bar) and change threshold (>= the baseline's)."""
  return config_pb2.MetricThreshold(
      value_threshold=config_pb2.GenericValueThreshold(
          lower_bound={"value": bar}),
      change_threshold=config_pb2.GenericChangeThreshold(
          direction=config_pb2.MetricDirection.HIGHER_IS_BETTER,
          absolute={"value": -CHANGE_TOLERANCE}))


def make_eval_config(threshold: float,
                     signature_name: str = features.FROM_CACHED_FEATURES,
                     gate_metric: str = GATE_METRICS[0],
                     ) -> config_pb2.EvalConfig:
  """EvalConfig for the Evaluator: the six metrics, gating on one of them.

  Args:
    threshold: The bar: the lowest corpus value of `gate_metric` (BLEU-4 in
      [0, 1], CIDEr-D in [0, 10]) that can be blessed.
    signature_name: Signature taking the examples' `image_features`
      (tf.string [None]; or, `from_examples`, serialized raw tf.Examples as
      `examples`) and returning {"caption": tf.string [None]}.
    gate_metric: "bleu_4" or "cider_d".

  Returns:
    A tfma.EvalConfig (config_pb2.EvalConfig: TFMA 0.52 does not export
    `tfma.EvalConfig` itself unless TFX has been imported) with one
    unnamed ModelSpec, the overall slice, metrics bleu_1..bleu_4, cider_d,
    rouge_l and, on `gate_metric` only, a value threshold (lower bound
    `threshold`) and a change threshold (not lower than the baseline
    model's).
  """
  if gate_metric not in GATE_METRICS:
    raise ValueError(f"gate_metric must be one of {', '.join(GATE_METRICS)},"
                     f" got {gate_metric!r}")
  metrics = [
      named_metric_config(
          name, threshold=gate_threshold(threshold)
          if name == gate_metric else None)
      for name in scoring.METRIC_NAMES
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
