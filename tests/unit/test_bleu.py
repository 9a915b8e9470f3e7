"""Tests for core/scoring.py's corpus BLEU and components/caption_metrics.py's TFMA metrics."""

import itertools
import json
import math

import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_specs
from tensorflow_model_analysis.proto import config_pb2

from components import caption_metrics
from core import scoring

ORDERS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")


def _approx(expected):
  return pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hand_computed_corpus_with_tied_reference_lengths():
  hypotheses = ["the cat sat on the mat", "a big dog runs"]
  references = [
      ["the cat is on the mat", "there is a cat on the mat"],
      ["a big dog", "a big dog runs home"],
  ]
  # Sentence 1, "the cat sat on the mat" (6 tokens), refs of 6 and 7 tokens.
  #   1-grams: the x2 (ref 1 has "the" twice), cat, on, mat match; sat not:
  #            5 of 6.
  #   2-grams: "the cat", "on the", "the mat" match; "cat sat", "sat on" not:
  #            3 of 5.
  #   3-grams: only "on the mat": 1 of 4.
  #   4-grams: none: 0 of 3.
  #   Closest reference length: 6.
  # Sentence 2, "a big dog runs" (4 tokens), refs of 3 and 5 tokens.
  #   Every n-gram is in "a big dog runs home": 4 of 4, 3 of 3, 2 of 2, 1 of 1.
  #   Reference lengths 3 and 5 are both 1 away: the tie goes to 3.
  # Corpus: p1 = 9/10, p2 = 6/8, p3 = 3/6, p4 = 1/4.
  #   Hypothesis length 10, reference length 6 + 3 = 9: no brevity penalty.
  #   (Were the tie broken towards 5, reference length 11 > 10 would give a
  #   brevity penalty of exp(1 - 11/10).)
  p1, p2, p3, p4 = 9 / 10, 6 / 8, 3 / 6, 1 / 4
  scores = scoring.corpus_bleu(hypotheses, references)
  assert scores == {
      "bleu_1": _approx(p1),
      "bleu_2": _approx((p1 * p2) ** (1 / 2)),
      "bleu_3": _approx((p1 * p2 * p3) ** (1 / 3)),
      "bleu_4": _approx((p1 * p2 * p3 * p4) ** (1 / 4)),
  }
  # Plain Python floats (not numpy scalars or sacrebleu objects).
  assert {type(value) for value in scores.values()} == {float}


def test_brevity_penalty_uses_closest_reference_length():
  # "a big dog runs" (4 tokens) is entirely in the first reference, so every
  # precision is 1. References have 7 and 6 tokens: the closest is 6, so
  # BP = exp(1 - 6/4) and every BLEU-n equals it.
  scores = scoring.corpus_bleu(
      ["a big dog runs"],
      [["a big dog runs to its home", "the big dog runs home now"]])
  expected = math.exp(1 - 6 / 4)
  assert scores == {name: _approx(expected) for name in ORDERS}


def test_perfect_match_scores_one():
  references = [
      ["a man rides a horse on the beach", "a person on a horse"],
      ["two dogs play in the snow", "dogs in snow", "two dogs playing"],
  ]
  hypotheses = [refs[0] for refs in references]
  assert scoring.corpus_bleu(hypotheses, references) == {
      name: _approx(1.0) for name in ORDERS}


def test_no_matching_4_gram_scores_zero_bleu_4():
  # 1-grams 4 of 4; 2-grams "the dog", "the cat" (not "dog the"): 2 of 3;
  # no 3- or 4-gram matches. No smoothing: BLEU-3 and BLEU-4 are exactly 0.
  scores = scoring.corpus_bleu(["the dog the cat"], [["the cat the dog"]])
  assert scores["bleu_1"] == _approx(1.0)
  assert scores["bleu_2"] == _approx(math.sqrt(2 / 3))
  assert scores["bleu_3"] == 0.0
  assert scores["bleu_4"] == 0.0


def test_hypothesis_shorter_than_4_tokens_scores_zero_bleu_4():
  scores = scoring.corpus_bleu(["a dog"], [["a dog"]])
  assert scores["bleu_2"] == _approx(1.0)
  assert scores["bleu_4"] == 0.0


def test_case_and_punctuation_do_not_matter():
  plain = scoring.corpus_bleu(["a cat sits on a mat"],
                           [["a cat is on the mat", "the cat sits"]])
  noisy = scoring.corpus_bleu(["A Cat sits, on a MAT!"],
                           [["A cat is on the mat.", "The cat... sits"]])
  assert noisy == plain


def test_varying_number_of_references():
  references = [["a red car"], ["a blue car", "a car", "blue car", "a car"]]
  scores = scoring.corpus_bleu(["a red car", "a blue car"], references)
  # Both hypotheses equal a reference: a perfect corpus except BLEU-4, as no
  # hypothesis has a 4-gram.
  assert scores["bleu_3"] == _approx(1.0)
  assert scores["bleu_4"] == 0.0


def test_sentence_statistics():
  statistics = scoring.sentence_statistics(
      "the cat sat on the mat",
      ["the cat is on the mat", "there is a cat on the mat"])
  assert statistics == scoring.BleuStatistics(
      hypothesis_length=6, reference_length=6, matches=(5, 3, 1, 0),
      totals=(6, 5, 4, 3))


_CORPUS = [
    ("a man riding a wave on top of a surfboard",
     ["a man riding a wave on a surfboard", "a surfer in the ocean"]),
    ("a plate of food with broccoli",
     ["a plate with broccoli and rice", "food on a white plate",
      "a dinner plate"]),
    ("a cat sitting on a laptop keyboard",
     ["a cat lying on a laptop", "the cat is on the keyboard"]),
    ("two giraffes standing in a field",
     ["two giraffes in a grassy field", "giraffes standing near trees",
      "a pair of giraffes", "two tall giraffes outside", "giraffes"]),
    ("a red bus", ["a red double decker bus driving down the street"]),
]


def test_pooling_order_does_not_matter():
  per_sentence = [scoring.sentence_statistics(h, r) for h, r in _CORPUS]
  expected = scoring.corpus_bleu([h for h, _ in _CORPUS],
                              [r for _, r in _CORPUS])
  results = set()
  for permutation in itertools.permutations(per_sentence):
    # Left fold, and a tree of partial pools (as Beam merges accumulators).
    results.add(scoring.pool(permutation))
    results.add(scoring.pool([scoring.pool(permutation[:2]),
                           scoring.pool(permutation[2:])]))
  assert len(results) == 1
  (pooled,) = results
  assert scoring.scores_from_statistics(pooled) == expected


def test_mismatched_lengths_and_missing_references_are_errors():
  with pytest.raises(ValueError):
    scoring.corpus_bleu(["a cat"], [["a cat"], ["a dog"]])
  with pytest.raises(ValueError):
    scoring.corpus_bleu(["a cat"], [[]])
  with pytest.raises(TypeError):
    scoring.sentence_statistics("a cat", "a cat")


def test_empty_corpus_scores_zero():
  assert scoring.corpus_bleu([], []) == {name: 0.0 for name in ORDERS}


# --- TFMA metric -----------------------------------------------------------


def test_metric_from_config_as_tfx_passes_it():
  config = config_pb2.MetricConfig(
      class_name="CorpusBleu", module="components.caption_metrics",
      config=json.dumps({"order": 2}))
  metric = metric_specs.metric_instance(config)
  assert isinstance(metric, caption_metrics.CorpusBleu)
  assert metric.name == "bleu_2"
  assert caption_metrics.metric_config(4) == config_pb2.MetricConfig(
      class_name="CorpusBleu", module="components.caption_metrics",
      config='{"order": 4}')
  with pytest.raises(ValueError):
    caption_metrics.CorpusBleu(order=5)


@pytest.mark.parametrize("class_name,name", [("CiderD", "cider_d"),
                                             ("RougeL", "rouge_l")])
def test_cider_d_and_rouge_l_from_config_as_tfx_passes_them(class_name, name):
  config = caption_metrics.named_metric_config(name)
  assert config == config_pb2.MetricConfig(
      class_name=class_name, module="components.caption_metrics")
  metric = metric_specs.metric_instance(config)
  assert type(metric).__name__ == class_name and metric.name == name
  assert caption_metrics.named_metric_config("bleu_3") == (
      caption_metrics.metric_config(3))
  with pytest.raises(ValueError, match="unknown caption metric"):
    caption_metrics.named_metric_config("meteor")


def _combine(combiner, inputs, partitions):
  """Runs a CombineFn as Beam may: add inputs per partition, then merge."""
  accumulators = []
  for part in partitions:
    accumulator = combiner.create_accumulator()
    for index in part:
      accumulator = combiner.add_input(accumulator, inputs[index])
    accumulators.append(accumulator)
  return combiner.extract_output(combiner.merge_accumulators(accumulators))


def _metric_inputs(caption, references, model_name=""):
  """Metric inputs of one example, shaped as TFMA's unbatched extracts."""
  label = np.array([r.encode() for r in references], dtype=object)
  prediction = np.array([caption.encode()], dtype=object)
  if model_name:  # Multi-model evaluations key everything by model name.
    label, prediction = {model_name: label}, {model_name: prediction}
  return tfma.metrics.StandardMetricInputs(labels=label,
                                           predictions=prediction)


@pytest.mark.parametrize("model_name", ["", "candidate"])
def test_metric_computations_give_plain_float_corpus_bleu(model_name):
  eval_config = config_pb2.EvalConfig(model_specs=[
      config_pb2.ModelSpec(name=name, label_key="captions",
                           prediction_key="caption")
      for name in ([model_name, "baseline"] if model_name else [""])])
  computations = caption_metrics.CorpusBleu(order=4).computations(
      eval_config=eval_config, model_names=[model_name])
  statistics, derived = computations
  inputs = [_metric_inputs(h, r, model_name) for h, r in _CORPUS]

  outputs = [
      _combine(statistics.combiner, inputs, [range(5)]),
      _combine(statistics.combiner, inputs, [[4, 0], [2], [3, 1]]),
  ]
  assert outputs[0] == outputs[1]
  scores = derived.result(outputs[0])
  bleu_key = tfma.metrics.MetricKey(name="bleu_4", model_name=model_name)
  assert list(scores) == [bleu_key]
  assert isinstance(scores[bleu_key], float)
  expected = scoring.corpus_bleu([h for h, _ in _CORPUS], [r for _, r in _CORPUS])
  assert scores[bleu_key] == expected["bleu_4"]


def test_all_metrics_share_one_statistics_computation():
  eval_config = config_pb2.EvalConfig(model_specs=[
      config_pb2.ModelSpec(label_key="captions", prediction_key="caption")])
  computations = []
  for metric in (caption_metrics.CorpusBleu(order=1),
                 caption_metrics.CorpusBleu(order=4),
                 caption_metrics.CiderD(), caption_metrics.RougeL()):
    computations += metric.computations(eval_config=eval_config)
  combined = {c for c in computations
              if isinstance(c, tfma.metrics.MetricComputation)}
  # TFMA de-duplicates equal computations: one combiner for all metrics.
  assert len(combined) == 1
  (statistics,) = combined
  inputs = [_metric_inputs(h, r) for h, r in _CORPUS]
  pooled = _combine(statistics.combiner, inputs, [[4, 0], [2], [3, 1]])
  assert pooled == _combine(statistics.combiner, inputs, [range(5)])
  results = {}
  for c in computations:
    if isinstance(c, tfma.metrics.DerivedMetricComputation):
      results.update(c.result(pooled))
  expected = scoring.caption_scores([h for h, _ in _CORPUS],
                                    [r for _, r in _CORPUS])
  # (Up to the order of the per-image sums: [[4, 0], ...] merged.)
  assert {k.name: v for k, v in results.items()} == {
      name: _approx(expected[name]) for name in ("bleu_1", "bleu_4",
                                                 "cider_d", "rouge_l")}
  assert {type(v) for v in results.values()} == {float}
  assert 0 < expected["cider_d"] < 10 and 0 < expected["rouge_l"] < 1


def test_metric_reads_sparse_labels_and_dict_predictions():
  references = ["a cat on a mat", "the cat sits"]
  label = tfma.types.SparseTensorValue(
      values=np.array([r.encode() for r in references], dtype=object),
      indices=np.array([[0], [1]]), dense_shape=np.array([2]))
  inputs = tfma.metrics.StandardMetricInputs(
      labels=label,
      predictions={"caption": np.array(b"a cat on a mat", dtype=object),
                   "other": np.array([1.0])})
  eval_config = config_pb2.EvalConfig(model_specs=[
      config_pb2.ModelSpec(label_key="captions", prediction_key="caption")])
  assert caption_metrics.references_and_hypothesis(inputs, eval_config) == (
      references, "a cat on a mat")
