"""Tests for components/caption_metrics.py: the EvalConfig run by TFMA for real.

A tiny SavedModel with the trained model's `from_examples` contract (tf.Module,
no Keras) captions a few raw tf.Examples shaped like ImageCaptionExampleGen's;
TFMA evaluates it as TFX's Evaluator does (JSON config, defaults with
rubber_stamp=True, one EvalSharedModel per ModelSpec) and must report the
metrics that `core.scoring` computes, and bless or not on the gate metric
(bleu_4 or cider_d). On the coco_fixtures splits (raw captions with hyphens
and clitics; a model that returns each example's fixture hypothesis) TFMA's
figures must be pycocoevalcap's.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf import json_format
from tensorflow_model_analysis.proto import config_pb2

from components import caption_evaluator
from components import caption_metrics
from core import scoring
from pipeline import local
from tests.helpers import coco_fixtures

# (image_id, reference captions): mixed case and punctuation, and a varying
# number of references, so TFMA hands the labels over as a sparse value.
EXAMPLES = [
    (1, ["A dog runs on the grass.", "a brown dog running in a field",
         "The dog is playing outside.", "dog on grass", "A happy dog.", ]),
    (2, ["Two cats sleep on a red sofa.", "cats sleeping on a couch",
         "two cats on a sofa"]),
    (3, ["A man rides a blue bike down the street.",
         "a person riding a bicycle", "A cyclist on a road.",
         "man on a bike", "a man riding his bike in the city",
         "someone cycling"]),
    (4, ["A plate of food on a wooden table.", "food on a plate",
         "a meal on a table", "dinner is served"]),
    (5, ["A red bus parked by the road.", "a bus on the street",
         "the red bus is parked", "a large red bus",
         "bus parked near a sidewalk"]),
    (6, ["Children play soccer in a park.", "kids playing football",
         "a group of children on a field playing with a ball"]),
]
WRONG_CAPTION = "a purple elephant is flying over the moon"


def _caption_for(image_id, references, wrong_ids):
  return WRONG_CAPTION if image_id in wrong_ids else references[0]


def _expected_bleu(wrong_ids):
  hypotheses = [_caption_for(i, refs, wrong_ids) for i, refs in EXAMPLES]
  return scoring.corpus_bleu(hypotheses, [refs for _, refs in EXAMPLES])


def _expected_scores(wrong_ids):
  hypotheses = [_caption_for(i, refs, wrong_ids) for i, refs in EXAMPLES]
  return scoring.caption_scores(hypotheses, [refs for _, refs in EXAMPLES])


class _FakeCaptioner(tf.Module):
  """Captions an example with its first reference, or wrong for some ids."""

  def __init__(self, wrong_ids):
    super().__init__()
    self._wrong_ids = tf.constant(sorted(wrong_ids), dtype=tf.int64)

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name="examples")])
  def from_examples(self, examples):
    parsed = tf.io.parse_example(examples, {
        "image_id": tf.io.FixedLenFeature([], tf.int64),
        "captions": tf.io.VarLenFeature(tf.string),
        "image_features": tf.io.FixedLenFeature([], tf.string),
    })
    # Touch the features as the real model does (float16 raw tensor).
    del parsed["image_features"]
    first = tf.sparse.to_dense(parsed["captions"], default_value="")[:, 0]
    wrong = tf.reduce_any(
        tf.equal(parsed["image_id"][:, None], self._wrong_ids[None, :]),
        axis=1)
    caption = tf.where(wrong, tf.constant(WRONG_CAPTION), first)
    return {"caption": caption}


def _save_model(path, wrong_ids):
  module = _FakeCaptioner(wrong_ids)
  tf.saved_model.save(module, str(path), signatures={
      "from_examples": module.from_examples})
  return str(path)


class _FixtureCaptioner(tf.Module):
  """Captions an example with its `hypothesis` feature (a test fixture's)."""

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name="examples")])
  def from_examples(self, examples):
    parsed = tf.io.parse_example(examples, {
        "hypothesis": tf.io.FixedLenFeature([], tf.string)})
    return {"caption": parsed["hypothesis"]}


def _serialized_example(image_id, captions, hypothesis=None):
  grid = np.arange(2 * 2 * 3, dtype=np.float16).reshape(2, 2, 3)
  feature = {
      "image_id": tf.train.Feature(
          int64_list=tf.train.Int64List(value=[image_id])),
      "file_name": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[f"{image_id:012d}.jpg".encode()])),
      "image_features": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[grid.tobytes()])),
      "image_features_shape": tf.train.Feature(
          int64_list=tf.train.Int64List(value=list(grid.shape))),
      "captions": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[c.encode() for c in captions])),
  }
  if hypothesis is not None:
    feature["hypothesis"] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[hypothesis.encode()]))
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("evaluation")
  data = root / "eval" / "data_tfrecord-00000-of-00001.gz"
  data.parent.mkdir()
  with tf.io.TFRecordWriter(str(data), options="GZIP") as writer:
    for image_id, captions in EXAMPLES:
      writer.write(_serialized_example(image_id, captions))
  fixtures = {}
  for name, (seed, n_images) in (("main", coco_fixtures.MAIN),
                                 ("held-out", coco_fixtures.HELD_OUT)):
    split = coco_fixtures.caption_split(seed, n_images)
    path = root / name / "data_tfrecord-00000-of-00001.gz"
    path.parent.mkdir()
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
      for image_id, (hypothesis, references) in enumerate(split.values()):
        writer.write(_serialized_example(image_id, references, hypothesis))
    fixtures[name] = (split, str(path.parent / "*"))
  fixture_model = _FixtureCaptioner()
  tf.saved_model.save(fixture_model, str(root / "fixture_model"), signatures={
      "from_examples": fixture_model.from_examples})
  return {
      "root": root,
      "data": str(data.parent / "*"),
      "fixtures": fixtures,
      "fixture_model": str(root / "fixture_model"),
      # Wrong on ids 2 and 5: 0 < BLEU < 1.
      "model": _save_model(root / "model", wrong_ids={2, 5}),
      # Wrong on id 2 only: strictly better than "model".
      "better_model": _save_model(root / "better_model", wrong_ids={2}),
  }


def _run_evaluator(workdir, name, bleu4_threshold, candidate, baseline=None,
                   gate_metric="bleu_4", data=None):
  """Runs TFMA as TFX's Evaluator executor does; returns the output path.

  `bleu4_threshold` is the bar of `gate_metric`."""
  # TFX hands the config over as JSON.
  eval_config = config_pb2.EvalConfig()
  json_format.Parse(
      json_format.MessageToJson(caption_metrics.make_eval_config(
          bleu4_threshold, signature_name="from_examples",
          gate_metric=gate_metric)),
      eval_config)
  eval_config = tfma.utils.update_eval_config_with_defaults(
      eval_config, has_baseline=baseline is not None, rubber_stamp=True)
  models = [
      tfma.default_eval_shared_model(
          eval_saved_model_path=baseline if spec.is_baseline else candidate,
          model_name=spec.name, eval_config=eval_config)
      for spec in eval_config.model_specs
  ]
  output_path = str(workdir["root"] / name)
  tfma.run_model_analysis(
      eval_shared_model=models[0] if len(models) == 1 else models,
      eval_config=eval_config,
      data_location=data or workdir["data"],
      output_path=output_path,
      # The local pipeline's runner and options, as its Evaluator gets them
      # (Beam's default DirectRunner would first try to download Prism).
      pipeline_options=PipelineOptions(local.local_beam_args([])))
  return output_path


def _overall_metrics(output_path, model_name=""):
  """{metric name: MetricValue proto} of the overall slice of one model."""
  for metrics_for_slice in tfma.load_metrics(output_path):
    if metrics_for_slice.slice_key.single_slice_keys:
      continue
    return {
        kv.key.name: kv.value
        for kv in metrics_for_slice.metric_keys_and_values
        if kv.key.model_name == model_name and not kv.key.is_diff
    }
  raise AssertionError(f"no overall slice in {output_path}")


def _failed_thresholds(validation_result):
  return sorted(
      (failure.metric_key.name, failure.metric_key.is_diff)
      for slice_failures in validation_result.metric_validations_per_slice
      for failure in slice_failures.failures)


def test_eval_config_model_spec():
  eval_config = caption_metrics.make_eval_config(0.25)
  assert len(eval_config.model_specs) == 1
  spec = eval_config.model_specs[0]
  assert spec.signature_name == "from_cached_features"
  assert spec.label_key == "captions"
  assert spec.prediction_key == "caption"
  # TFX derives candidate and baseline from one unnamed spec.
  assert not spec.name and not spec.is_baseline
  assert list(eval_config.slicing_specs) == [config_pb2.SlicingSpec()]
  metrics = eval_config.metrics_specs[0].metrics
  # BLEU-1..4, then CIDEr-D and ROUGE-L (issue 16).
  assert [(m.class_name, m.module) for m in metrics] == (
      [("CorpusBleu", "components.caption_metrics")] * 4 +
      [("CiderD", "components.caption_metrics"),
       ("RougeL", "components.caption_metrics")])
  bleu_4 = metrics[3]
  assert bleu_4.config == '{"order": 4}'
  threshold = bleu_4.threshold
  assert threshold.value_threshold.lower_bound.value == 0.25
  assert threshold.change_threshold.direction == (
      config_pb2.MetricDirection.HIGHER_IS_BETTER)
  assert threshold.change_threshold.absolute.value == -1e-10
  assert [m.HasField("threshold") for m in metrics] == [
      False, False, False, True, False, False]


class _CachedFeaturesCaptioner(tf.Module):
  """Has the Evaluator's signature of exports since from_cached_features."""

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name="image_features")])
  def from_cached_features(self, image_features):
    return {"caption": tf.fill(tf.shape(image_features), "a caption")}


def test_the_evaluator_scores_older_exports_through_from_examples(workdir):
  # A last blessed model exported before from_cached_features: both models
  # are scored through from_examples; with the signature, as configured.
  module = _CachedFeaturesCaptioner()
  new = str(workdir["root"] / "with_cached_features")
  tf.saved_model.save(module, new, signatures={
      "from_cached_features": module.from_cached_features})
  assert caption_evaluator.signature_names(new) == ["from_cached_features"]
  config = json_format.MessageToJson(caption_metrics.make_eval_config(0.25))
  assert caption_evaluator.eval_config_for_models(config, [new]) == config
  for models in ([new, workdir["model"]], [workdir["model"]]):
    chosen = config_pb2.EvalConfig()
    json_format.Parse(caption_evaluator.eval_config_for_models(config, models),
                      chosen)
    assert [s.signature_name for s in chosen.model_specs] == ["from_examples"]
    assert chosen.metrics_specs == caption_metrics.make_eval_config(
        0.25).metrics_specs


def test_eval_config_gating_on_cider_d():
  eval_config = caption_metrics.make_eval_config(0.7, gate_metric="cider_d")
  metrics = eval_config.metrics_specs[0].metrics
  assert [m.HasField("threshold") for m in metrics] == [
      False, False, False, False, True, False]
  threshold = metrics[4].threshold
  assert metrics[4].class_name == "CiderD"
  assert threshold == caption_metrics.make_eval_config(0.7).metrics_specs[
      0].metrics[3].threshold
  with pytest.raises(ValueError, match="'rouge_l'"):
    caption_metrics.make_eval_config(0.7, gate_metric="rouge_l")


def test_signature_name_is_configurable():
  eval_config = caption_metrics.make_eval_config(0.1, signature_name="other")
  assert eval_config.model_specs[0].signature_name == "other"


def test_tfma_reports_corpus_bleu_and_blesses_above_threshold(workdir):
  expected = _expected_bleu(wrong_ids={2, 5})
  assert 0.0 < expected["bleu_4"] < 1.0

  output_path = _run_evaluator(workdir, "low_threshold",
                               bleu4_threshold=expected["bleu_4"] - 0.01,
                               candidate=workdir["model"])

  metrics = _overall_metrics(output_path)
  assert set(metrics) >= {"bleu_1", "bleu_2", "bleu_3", "bleu_4"}
  assert not any(name.startswith("_") for name in metrics)
  all_six = _expected_scores(wrong_ids={2, 5})
  assert set(all_six) - set(expected) == {"cider_d", "rouge_l"}
  expected = all_six
  for name, value in expected.items():
    # Plain floats: a double_value that thresholds can compare.
    assert metrics[name].WhichOneof("type") == "double_value", metrics[name]
    assert metrics[name].double_value.value == pytest.approx(value, abs=1e-6)
  validation = tfma.load_validation_result(output_path)
  assert validation.validation_ok, validation


def test_tfma_does_not_bless_below_threshold(workdir):
  expected = _expected_bleu(wrong_ids={2, 5})
  output_path = _run_evaluator(workdir, "high_threshold",
                               bleu4_threshold=expected["bleu_4"] + 0.01,
                               candidate=workdir["model"])
  validation = tfma.load_validation_result(output_path)
  assert not validation.validation_ok
  assert _failed_thresholds(validation) == [("bleu_4", False)]


def test_tfma_does_not_bless_worse_than_baseline(workdir):
  assert (_expected_bleu(wrong_ids={2})["bleu_4"] >
          _expected_bleu(wrong_ids={2, 5})["bleu_4"])
  output_path = _run_evaluator(workdir, "worse_than_baseline",
                               bleu4_threshold=0.0,
                               candidate=workdir["model"],
                               baseline=workdir["better_model"])
  validation = tfma.load_validation_result(output_path)
  assert not validation.validation_ok
  # Only the change threshold fails: the value threshold (0) passes.
  assert _failed_thresholds(validation) == [("bleu_4", True)]


def test_tfma_blesses_as_good_as_baseline(workdir):
  output_path = _run_evaluator(workdir, "same_as_baseline",
                               bleu4_threshold=0.0,
                               candidate=workdir["better_model"],
                               baseline=workdir["better_model"])
  validation = tfma.load_validation_result(output_path)
  assert validation.validation_ok, validation
  expected = _expected_bleu(wrong_ids={2})
  metrics = _overall_metrics(output_path, model_name=tfma.CANDIDATE_KEY)
  assert metrics["bleu_4"].double_value.value == pytest.approx(
      expected["bleu_4"], abs=1e-6)


def test_tfma_gates_on_cider_d(workdir):
  expected = _expected_scores(wrong_ids={2, 5})
  assert 0.0 < expected["cider_d"] < 10.0
  below = _run_evaluator(workdir, "cider_d_above_model",
                         bleu4_threshold=expected["cider_d"] + 0.01,
                         candidate=workdir["model"], gate_metric="cider_d")
  validation = tfma.load_validation_result(below)
  assert not validation.validation_ok
  # Only CIDEr-D is gated: BLEU-4 has no bar now.
  assert _failed_thresholds(validation) == [("cider_d", False)]
  above = _run_evaluator(workdir, "cider_d_below_model",
                         bleu4_threshold=expected["cider_d"] - 0.01,
                         candidate=workdir["model"], gate_metric="cider_d")
  assert tfma.load_validation_result(above).validation_ok
  assert _overall_metrics(above)["cider_d"].double_value.value == (
      pytest.approx(expected["cider_d"], abs=1e-9))


@pytest.mark.parametrize("fixture", ["main", "held-out"])
def test_tfma_gives_pycocoevalcap_scores_on_raw_fixtures(workdir, fixture):
  """The acceptance test of issue 16 for the Evaluator: PTB-tokenized
  coco-caption figures, from raw captions, through TFMA."""
  pytest.importorskip("pycocoevalcap")
  split, data = workdir["fixtures"][fixture]
  expected = coco_fixtures.pycocoevalcap_scores(split)
  output_path = _run_evaluator(workdir, f"fixture_{fixture}",
                               bleu4_threshold=0.0,
                               candidate=workdir["fixture_model"], data=data)
  metrics = _overall_metrics(output_path)
  assert set(expected) <= set(metrics)
  for name, value in expected.items():
    assert metrics[name].WhichOneof("type") == "double_value", metrics[name]
    assert metrics[name].double_value.value == pytest.approx(
        value, abs=1e-4), name


def test_report_rows_show_per_image_cider_d_with_the_split_idf(workdir):
  from components import caption_evaluator  # pylint: disable=g-import-not-at-top
  serialized = [_serialized_example(i, refs) for i, refs in EXAMPLES]
  references = [refs for _, refs in EXAMPLES]
  df = scoring.document_frequency(references)
  out = workdir["root"] / "report"
  rows = caption_evaluator._rows(  # pylint: disable=protected-access
      workdir["model"], serialized, str(out), df)
  expected = _expected_scores(wrong_ids={2, 5})
  # Over the whole split, the per-image CIDEr-D and ROUGE-L average to the
  # corpus figures TFMA reports.
  for name in ("cider_d", "rouge_l"):
    mean = sum(row[name] for row in rows) / len(rows)
    assert mean == pytest.approx(expected[name], abs=1e-12), name
  right = [r["cider_d"] for r in rows if r["image_id"] not in {2, 5}]
  wrong = [r["cider_d"] for r in rows if r["image_id"] in {2, 5}]
  assert len(wrong) == 2 and max(wrong) < min(right)
  page = caption_evaluator.render_html(
      {"": {**expected}}, True, [], rows)
  assert "<th>CIDEr-D</th>" in page and ">cider_d<" in page
  assert f"{rows[0]['cider_d']:.3f}" in page
  assert f"{expected['cider_d']:.4f}" in page
