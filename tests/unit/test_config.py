import glob
import os
import textwrap

import pytest

from core import config as config_lib


def _write(tmp_path, body):
  path = tmp_path / "config.yaml"
  path.write_text(textwrap.dedent(body))
  return str(path)


def test_the_local_default_loads_typed():
  config = config_lib.load(config_lib.DEFAULT_CONFIG)
  assert config.pipeline_name == "image-captioning-local"
  assert isinstance(config.training.learning_rate, float)
  assert config.features.extractor == "patches"
  assert config.resolve("build/x").startswith(config_lib.REPO_ROOT)
  assert config.resolve("gs://bucket/x") == "gs://bucket/x"


def test_an_unknown_key_is_named(tmp_path):
  path = _write(tmp_path, """
      training:
        epochz: 3
      """)
  with pytest.raises(config_lib.ConfigError, match=r"'training\.epochz'"):
    config_lib.load(path)


def test_an_unknown_top_level_key_is_named(tmp_path):
  with pytest.raises(config_lib.ConfigError, match=r"'pipline_name'"):
    config_lib.load(_write(tmp_path, "pipline_name: x\n"))


def test_an_ill_typed_key_is_named(tmp_path):
  path = _write(tmp_path, """
      model:
        num_layers: two
      """)
  with pytest.raises(config_lib.ConfigError,
                     match=r"'model\.num_layers' must be int"):
    config_lib.load(path)


def test_a_section_that_is_not_a_mapping_is_named(tmp_path):
  with pytest.raises(config_lib.ConfigError, match=r"'features'"):
    config_lib.load(_write(tmp_path, "features: 3\n"))


def test_numbers_are_coerced_to_float_but_bools_are_not_ints(tmp_path):
  config = config_lib.load(_write(tmp_path, """
      training:
        learning_rate: 1e-4
      """))
  assert config.training.learning_rate == pytest.approx(1e-4)
  with pytest.raises(config_lib.ConfigError, match="training.epochs"):
    config_lib.load(_write(tmp_path, "training: {epochs: true}\n"))


def test_overrides_merge_into_the_file(tmp_path):
  config = config_lib.load(config_lib.DEFAULT_CONFIG,
                           overrides={"training": {"epochs": 1}})
  assert config.training.epochs == 1
  assert config.training.batch_size == 64


def test_a_config_can_inherit_the_local_default(tmp_path):
  path = _write(tmp_path, f"""
      base: {config_lib.DEFAULT_CONFIG}
      training: {{epochs: 1}}
      """)
  config = config_lib.load(path)
  default = config_lib.load(config_lib.DEFAULT_CONFIG)
  assert config.training.epochs == 1
  assert config.training.learning_rate == default.training.learning_rate
  assert config.model == default.model


def test_a_missing_config_file_is_named(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="nowhere.yaml"):
    config_lib.load(str(tmp_path / "nowhere.yaml"))


# Every config in configs/ but the orchestrators' (test_vertex_runner.py,
# test_kubeflow.py build theirs).
_SHIPPED = sorted(
    os.path.basename(p) for p in glob.glob(
        os.path.join(config_lib.REPO_ROOT, "configs", "*.yaml"))
    if os.path.basename(p) not in ("vertex.yaml", "kubeflow.yaml"))


@pytest.mark.parametrize("name", _SHIPPED)
def test_every_shipped_config_builds_the_pipeline(name):
  from pipeline import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(config_lib.REPO_ROOT, "configs", name))
  built = pipeline_lib.create_pipeline(
      config, pipeline_root="/tmp/root", data_root=config.data.root,
      serving_dir="/tmp/serving")
  assert [c.id for c in built.components][0] == "ImageCaptionExampleGen"


def test_the_gate_metric_and_its_bar(tmp_path):
  config = config_lib.load(config_lib.DEFAULT_CONFIG)
  assert config.evaluation.gate_metric == "bleu_4"
  assert config.evaluation.gate_threshold == config.evaluation.bleu4_threshold
  config = config_lib.load(_write(tmp_path, """
      evaluation: {gate_metric: cider_d, cider_d_threshold: 0.8}
      """))
  assert config.evaluation.gate_threshold == 0.8
  with pytest.raises(config_lib.ConfigError,
                     match=r"'evaluation\.gate_metric' must be one of "
                     r"bleu_4, cider_d, got 'meteor'"):
    config_lib.load(_write(tmp_path, "evaluation: {gate_metric: meteor}\n"))


def test_the_gate_metrics_are_the_evaluators():
  from components import caption_metrics  # pylint: disable=g-import-not-at-top
  from core import scoring  # pylint: disable=g-import-not-at-top
  assert config_lib.GATE_METRICS == caption_metrics.GATE_METRICS
  assert set(config_lib.GATE_METRICS) <= set(scoring.METRIC_NAMES)


def test_the_pipeline_gates_on_the_configured_metric():
  from pipeline import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(config_lib.DEFAULT_CONFIG, overrides={
      "evaluation": {"gate_metric": "cider_d", "cider_d_threshold": 0.6}})
  built = pipeline_lib.create_pipeline(
      config, pipeline_root="/tmp/root", data_root=config.data.root,
      serving_dir="/tmp/serving")
  (evaluator,) = [c for c in built.components if c.id == "Evaluator"]
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  from tensorflow_model_analysis.proto import config_pb2  # pylint: disable=g-import-not-at-top
  # TFX keeps the EvalConfig as JSON in the execution properties.
  eval_config = json_format.Parse(evaluator.exec_properties["eval_config"],
                                  config_pb2.EvalConfig())
  thresholded = [m for spec in eval_config.metrics_specs for m in spec.metrics
                 if m.HasField("threshold")]
  assert [m.class_name for m in thresholded] == ["CiderD"]
  assert thresholded[0].threshold.value_threshold.lower_bound.value == 0.6
