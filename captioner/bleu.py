"""Corpus BLEU-1..4 of generated captions, as coco-caption computes it.

This is the one BLEU definition of the project: the Evaluator (through the
TFMA metric `CorpusBleu` below) and the `captioner bleu` command both use it.

Definition (pycocoevalcap/bleu/bleu_scorer.py, option "closest"):
  * every hypothesis and reference is tokenized with `captioner.text.normalize`
    (the tokenization the model was trained on);
  * per sentence: clipped n-gram matches (a hypothesis n-gram counts at most
    as often as it occurs in the single reference that has it most often),
    hypothesis n-gram counts, hypothesis length, and the reference length
    closest to the hypothesis length (ties go to the shorter reference);
  * these statistics are summed over the corpus, and
      BLEU-n = BP * (p_1 * ... * p_n) ** (1 / n),  p_k = matches_k / total_k,
      BP = exp(1 - ref_len / hyp_len) if hyp_len < ref_len else 1;
  * no smoothing: a corpus without any matching n-gram scores 0 for BLEU-n.

The n-gram counting and the formula are sacrebleu's (`BLEU(tokenize="none",
smooth_method="none", effective_order=False)`), checked against coco-caption:
  * sacrebleu's `_get_closest_ref_len` picks the closest reference length
    with ties to the shorter one, exactly as coco-caption's
    `min((abs(l - testlen), l) for l in reflen)`.
  * `BLEU.corpus_score` takes reference *streams* (one list per reference
    position), so a varying number of references per hypothesis would need
    None-padding. We score each sentence on its own references instead (its
    `BLEUScore` carries the sentence's sufficient statistics: counts, totals,
    sys_len, ref_len), sum them, and compute the score with the public static
    `BLEU.compute_bleu`. This also gives the per-sentence statistics that the
    TFMA combiner pools.
  * sacrebleu computes BLEU for one maximum order; BLEU-n for n < 4 is
    `compute_bleu` on the first n counts with `max_ngram_order=n`, which is
    coco-caption's geometric mean of the first n precisions.
  * Known difference: coco-caption adds epsilons (1e-15 to matches, 1e-9 to
    totals and lengths), so where there is no n-gram match it reports a tiny
    positive BLEU-n (typically 1e-6..1e-4) and its brevity penalty differs
    by about 1e-9 relative. Here such a BLEU-n is exactly 0 (no smoothing);
    all other values agree to ~1e-9.
  * sacrebleu reports scores in percent; the functions here return [0, 1].

Example weights are ignored: BLEU is a corpus statistic, as in TFMA's Bleu.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from sacrebleu.metrics import BLEU
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.proto import config_pb2

from captioner import text

MAX_ORDER = 4
ORDERS = tuple(range(1, MAX_ORDER + 1))

# Name of the TFMA metric class, for MetricConfig.class_name / module.
METRIC_CLASS_NAME = "CorpusBleu"
METRIC_MODULE = __name__

# Private (leading "_") TFMA key of the pooled statistics: TFMA drops private
# metrics from its output, and computes this one only once for all orders.
_STATISTICS_METRIC_NAME = "_corpus_bleu_statistics"


def metric_name(order: int) -> str:
  """Name of the BLEU-`order` metric, e.g. "bleu_4"."""
  return f"bleu_{order}"


@dataclasses.dataclass(frozen=True)
class BleuStatistics:
  """Sufficient statistics of corpus BLEU; pool sentences by adding them.

  Attributes:
    hypothesis_length: Number of hypothesis tokens.
    reference_length: Sum of the reference lengths closest to each hypothesis.
    matches: Clipped matching n-grams, for n = 1..MAX_ORDER.
    totals: Hypothesis n-grams, for n = 1..MAX_ORDER.
  """
  hypothesis_length: int = 0
  reference_length: int = 0
  matches: tuple = (0,) * MAX_ORDER
  totals: tuple = (0,) * MAX_ORDER

  def __add__(self, other: BleuStatistics) -> BleuStatistics:
    return BleuStatistics(
        hypothesis_length=self.hypothesis_length + other.hypothesis_length,
        reference_length=self.reference_length + other.reference_length,
        matches=tuple(a + b for a, b in zip(self.matches, other.matches)),
        totals=tuple(a + b for a, b in zip(self.totals, other.totals)))


def pool(statistics: Iterable[BleuStatistics]) -> BleuStatistics:
  """Sums per-sentence (or partial-corpus) statistics."""
  return sum(statistics, BleuStatistics())


@functools.lru_cache(maxsize=None)
def _sacrebleu() -> BLEU:
  # Input is already tokenized by `text.normalize`, hence tokenize="none";
  # force=True silences the "looks tokenized" warning that this implies.
  return BLEU(tokenize="none", smooth_method="none", effective_order=False,
              max_ngram_order=MAX_ORDER, force=True)


def _tokenized(caption: str) -> str:
  return " ".join(text.normalize(caption))


def sentence_statistics(hypothesis: str,
                        references: Sequence[str]) -> BleuStatistics:
  """BLEU statistics of one hypothesis against all its references."""
  if isinstance(references, str):
    raise TypeError("references must be a sequence of strings, not a string")
  if len(references) == 0:  # pylint: disable=g-explicit-length-test
    # coco-caption cannot score this either (closest length of nothing).
    raise ValueError(f"no reference captions for hypothesis {hypothesis!r}")
  score = _sacrebleu().corpus_score(
      [_tokenized(hypothesis)], [[_tokenized(r)] for r in references])
  return BleuStatistics(
      hypothesis_length=score.sys_len,
      reference_length=score.ref_len,
      matches=tuple(score.counts),
      totals=tuple(score.totals))


def bleu_from_statistics(statistics: BleuStatistics, order: int) -> float:
  """BLEU-`order` in [0, 1] from pooled statistics."""
  if order not in ORDERS:
    raise ValueError(f"BLEU order must be one of {ORDERS}, got {order}")
  score = BLEU.compute_bleu(
      correct=list(statistics.matches[:order]),
      total=list(statistics.totals[:order]),
      sys_len=statistics.hypothesis_length,
      ref_len=statistics.reference_length,
      smooth_method="none",
      effective_order=False,
      max_ngram_order=order)
  return float(score.score) / 100.0


def scores_from_statistics(statistics: BleuStatistics) -> dict:
  """{"bleu_1": .., ..., "bleu_4": ..} as plain floats."""
  return {metric_name(n): bleu_from_statistics(statistics, n) for n in ORDERS}


def corpus_statistics(hypotheses: Sequence[str],
                      references: Sequence[Sequence[str]]) -> BleuStatistics:
  """Pooled statistics; references[i] holds all references of hypotheses[i]."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} "
                     "reference lists")
  return pool(sentence_statistics(h, r) for h, r in zip(hypotheses, references))


def corpus_bleu(hypotheses: Sequence[str],
                references: Sequence[Sequence[str]]) -> dict:
  """coco-caption corpus BLEU-1..4 of `hypotheses`, as plain floats in [0, 1].

  Args:
    hypotheses: One generated caption per image.
    references: For each image, all its reference captions (any number >= 1).

  Returns:
    {"bleu_1": float, "bleu_2": float, "bleu_3": float, "bleu_4": float}
  """
  return scores_from_statistics(corpus_statistics(hypotheses, references))


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
