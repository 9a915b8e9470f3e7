"""The captioning pipeline graph, the same for every runner."""

from typing import Any, Dict, List, Optional

# TFX's classes from their own modules, not through `tfx.v1`: importing
# tfx.v1 also imports its Google Cloud extensions (google.cloud.aiplatform),
# seconds of every process that runs the pipeline (BENCHMARKS.md, "The
# README's two commands").
from tfx.components.example_gen.import_example_gen.component import ImportExampleGen
from tfx.components.example_validator.component import ExampleValidator
from tfx.components.pusher.component import Pusher
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.components.statistics_gen.component import StatisticsGen
from tfx.components.trainer.component import Trainer
from tfx.components.transform.component import Transform
from tfx.dsl.components.common.resolver import Resolver
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import example_gen_pb2
from tfx.proto import pusher_pb2
from tfx.proto import trainer_pb2
from tfx.proto import transform_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

from components import caption_evaluator
from components import caption_metrics
from components.data_contract import DataContractCheck
from components.data_contract import grid_text
from components.image_caption_example_gen import ImageCaptionExampleGen
from core import config as config_lib
from core import extractors
from ingest import feature_cache
from pipeline import baseline
from pipeline import fingerprint
from pipeline import validation

# Components refer to project code by module path, so the code travels with
# the installed package (or container image), never as an uploaded file.
PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.task.run_fn"
# The curated schema inside the pipeline image (Dockerfile: the repository
# is copied to WORKDIR /pipeline), where Vertex AI runs ImportSchemaGen;
# locally it is validation.SCHEMA_FILE in this checkout.
IMAGE_SCHEMA_FILE = "/pipeline/pipeline/schema.pbtxt"
# The code each component runs, by module; its fingerprint (a hash of the
# module's source and the project modules it imports) goes into what the
# component's cache key sees, since TFX does not read code named by path.
EXAMPLE_GEN_MODULE = "components.image_caption_example_gen"
DATA_CONTRACT_MODULE = "components.data_contract"
PREPROCESSING_MODULE = PREPROCESSING_FN.rsplit(".", 1)[0]
TRAINER_MODULE = RUN_FN.rsplit(".", 1)[0]
EVALUATOR_MODULE = "components.caption_evaluator"
CODE_FINGERPRINT_KEY = config_lib.CODE_FINGERPRINT_KEY


def _fingerprinted(component, value: str):
  """Adds `value` to a TFX component's execution properties (for those
  without a custom_config): TFX hashes every property into the cache key,
  and the executors ignore a property they do not know."""
  component.exec_properties[CODE_FINGERPRINT_KEY] = value
  return component


def check_feature_cache(config: config_lib.PipelineConfig) -> None:
  """Raises feature_cache.CacheMismatchError, naming both, unless the
  `data.feature_cache` output was made with `features.*`."""
  features = config.features
  feature_cache.check_provenance(
      config.data.feature_cache,
      extractors.provenance(features.extractor, features.weights,
                            features.dtype, features.alpha,
                            features.patch_image_size, features.patch_size),
      features.weights)


def examples_node(config: config_lib.PipelineConfig, data_root: str):
  """ImageCaptionExampleGen over the dataset at `data_root`, or, with
  `data.feature_cache`, ImportExampleGen over that `captioner
  cache-features` output once its provenance matches `features.*`
  (feature_cache.CacheMismatchError, naming both, if not).

  ImportExampleGen rather than a mode of ImageCaptionExampleGen: it is
  TFX's own, its driver fingerprints the cache's files (a rewritten cache
  reruns the pipeline, an unchanged one is reused), and it copies records
  without decoding an image or running the extractor.
  """
  data, features = config.data, config.features
  if data.feature_cache:
    check_feature_cache(config)
    return ImportExampleGen(
        input_base=data.feature_cache,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name=name, pattern=f"{folder}/*")
            for name, folder in (("train", data.feature_cache_train),
                                 ("eval", data.feature_cache_eval))]))
  return ImageCaptionExampleGen(
      input_base=data_root,
      dataset=data.dataset,
      splits=data.splits(),
      extractor=features.extractor, weights=features.weights,
      batch_size=features.batch_size, feature_dtype=features.dtype,
      patch_image_size=features.patch_image_size,
      patch_size=features.patch_size, max_pixels=features.max_pixels,
      alpha=features.alpha,
      code_fingerprint=fingerprint.code_fingerprint(EXAMPLE_GEN_MODULE),
      weights_checksum=fingerprint.file_checksum(features.weights))


def data_validation(examples, grid, dtype: str, schema_file: str,
                    schema_checksum: str = ""):
  """The nodes that check the examples before Transform, in order:
  StatisticsGen, ImportSchemaGen, ExampleValidator, DataContractCheck.

  ImportSchemaGen imports the curated schema (`schema_file`, the data
  contract) rather than inferring one from the data it is to check;
  ExampleValidator validates each split's statistics against it and writes
  the anomalies; DataContractCheck fails the run when a split breaks the
  contract or its feature grid is not `grid` (h, w, c) in `dtype`.
  `schema_checksum`: of the schema file's content, for ImportSchemaGen's
  cache key (which sees only the path).
  """
  schema_gen = _fingerprinted(ImportSchemaGen(
      schema_file=schema_file), schema_checksum).with_id(
          validation.SCHEMA_NODE_ID)
  statistics_gen = StatisticsGen(
      examples=examples, schema=schema_gen.outputs["schema"])
  example_validator = ExampleValidator(
      statistics=statistics_gen.outputs["statistics"],
      schema=schema_gen.outputs["schema"])
  data_contract_check = DataContractCheck(
      statistics=statistics_gen.outputs["statistics"],
      anomalies=example_validator.outputs["anomalies"],
      schema=schema_gen.outputs["schema"],
      grid=grid_text(grid), dtype=dtype,
      code_fingerprint=fingerprint.code_fingerprint(DATA_CONTRACT_MODULE))
  return statistics_gen, schema_gen, example_validator, data_contract_check


def create_pipeline(
    config: config_lib.PipelineConfig,
    pipeline_root: str,
    data_root: str,
    serving_dir: str,
    metadata_connection_config=None,
    beam_pipeline_args: Optional[List[str]] = None,
    vertex_training_args: Optional[Dict[str, Any]] = None,
    vertex_region: Optional[str] = None,
    schema_file: Optional[str] = None,
    baseline_strategy=baseline.LatestBlessedOtherModelStrategy,
) -> Pipeline:
  """ExampleGen -> StatisticsGen/ImportSchemaGen/ExampleValidator/
  DataContractCheck -> Transform -> Trainer -> Evaluator -> Pusher.

  With `vertex_training_args` (a Vertex AI CustomJob plus its "project", as
  pipeline/vertex.py builds it) the Trainer runs as a Vertex AI Training job
  in `vertex_region`; without it, in the orchestrator's own process.
  `schema_file`: the curated schema where the components run; by default
  this checkout's (validation.SCHEMA_FILE), or the pipeline image's
  (IMAGE_SCHEMA_FILE) with `vertex_training_args`.
  `baseline_strategy`: how the Evaluator's baseline is resolved; the default
  skips this run's own model, so that a rerun reuses the Evaluator
  (pipeline/baseline.py); Vertex AI runs only TFX's LatestBlessedModelStrategy.
  None: no Resolver and no baseline, so the Evaluator gates every run by the
  value threshold alone, as on a first run (Kubeflow Pipelines' own backend
  runs no Resolver: pipeline/kubeflow.py).

  Caching (`config.enable_cache`): each component's cache key also sees the
  fingerprint of the project code it runs and the checksum of the files it
  reads by path (the extractor's weights, the schema), so a changed module
  reruns the component that runs it and everything downstream.
  """
  example_gen = examples_node(config, data_root)
  if schema_file is None:
    schema_file = (IMAGE_SCHEMA_FILE if vertex_training_args is not None
                   else validation.SCHEMA_FILE)
  # The data is checked before Transform: a split that breaks the contract
  # stops the run there, so no model is trained on it or pushed.
  statistics_gen, schema_gen, example_validator, data_contract_check = (
      data_validation(example_gen.outputs["examples"],
                      validation.feature_grid(config.features),
                      config.features.dtype, schema_file,
                      fingerprint.file_checksum(validation.SCHEMA_FILE)))
  transform = transform_node(config, example_gen, schema_gen,
                             after=data_contract_check)
  trainer = trainer_node(config, transform, schema_gen,
                         vertex_training_args, vertex_region)
  model_resolver = (baseline_resolver(baseline_strategy, trainer)
                    if baseline_strategy is not None else None)
  evaluator = evaluator_node(config, example_gen, trainer, model_resolver)
  pusher = Pusher(
      model=trainer.outputs["model"],
      model_blessing=evaluator.outputs["blessing"],
      push_destination=pusher_pb2.PushDestination(
          filesystem=pusher_pb2.PushDestination.Filesystem(
              base_directory=serving_dir)))

  return Pipeline(
      pipeline_name=config.pipeline_name,
      pipeline_root=pipeline_root,
      components=[c for c in (example_gen, schema_gen, statistics_gen,
                              example_validator, data_contract_check,
                              transform, trainer, model_resolver, evaluator,
                              pusher) if c is not None],
      enable_cache=config.enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args or [])


def transform_node(config, example_gen, schema_gen, after):
  """Transform: the vocabulary (`vocab.*`) and token ids, analysed on train;
  runs only after `after` (DataContractCheck) passed, a task dependency that
  LocalDagRunner and Vertex AI Pipelines both honor."""
  transform = Transform(
      examples=example_gen.outputs["examples"],
      schema=schema_gen.outputs["schema"],
      preprocessing_fn=PREPROCESSING_FN,
      splits_config=transform_pb2.SplitsConfig(analyze=["train"],
                                             transform=["train", "eval"]),
      custom_config={**config.vocab.model_dump(),
                     CODE_FINGERPRINT_KEY: fingerprint.code_fingerprint(
                         PREPROCESSING_MODULE)})
  transform.add_upstream_node(after)
  return transform


def trainer_node(config, transform, schema_gen, vertex_training_args=None,
                 vertex_region=None):
  """The Trainer running trainer.task.run_fn: in the orchestrator's process,
  or with `vertex_training_args` as a Vertex AI CustomJob in
  `vertex_region` (the same executor and run_fn)."""
  custom_config = config.trainer_custom_config(
      fingerprint.code_fingerprint(TRAINER_MODULE))
  trainer_class = Trainer
  if vertex_training_args is not None:
    if not vertex_region:
      raise ValueError("vertex_training_args needs vertex_region")
    from tfx.v1.extensions import google_cloud_ai_platform as cloud  # pylint: disable=g-import-not-at-top
    trainer_class = cloud.Trainer
    custom_config.update({
        cloud.ENABLE_VERTEX_KEY: True,
        cloud.VERTEX_REGION_KEY: vertex_region,
        cloud.TRAINING_ARGS_KEY: vertex_training_args})
  return trainer_class(
      run_fn=RUN_FN,
      examples=transform.outputs["transformed_examples"],
      transform_graph=transform.outputs["transform_graph"],
      schema=schema_gen.outputs["schema"],
      # Informational (run_fn trains by `training.*`); 0 steps: whole epochs.
      train_args=trainer_pb2.TrainArgs(
          num_steps=config.training.epochs * config.training.steps_per_epoch),
      eval_args=trainer_pb2.EvalArgs(num_steps=config.training.eval_steps),
      custom_config=custom_config)


def baseline_resolver(baseline_strategy, trainer):
  """The Resolver of the Evaluator's baseline: the latest blessed model (our
  strategy also sees this run's candidate, to skip it)."""
  channels = {
      baseline.MODEL_KEY: Channel(
          type=standard_artifacts.Model),
      baseline.MODEL_BLESSING_KEY: Channel(
          type=standard_artifacts.ModelBlessing)}
  if baseline_strategy is baseline.LatestBlessedOtherModelStrategy:
    channels[baseline.CANDIDATE_KEY] = trainer.outputs["model"]
  return Resolver(
      strategy_class=baseline_strategy, **channels,
  ).with_id("latest_blessed_model_resolver")


def evaluator_node(config, example_gen, trainer, model_resolver):
  """The standard Evaluator gating on `evaluation.gate_metric`; its executor
  also writes report.html. `model_resolver` None: no baseline model."""
  baseline_model = {} if model_resolver is None else {
      "baseline_model": model_resolver.outputs["model"]}
  return _fingerprinted(caption_evaluator.CaptionEvaluator(
      examples=example_gen.outputs["examples"],
      model=trainer.outputs["model"],
      **baseline_model,
      eval_config=caption_metrics.make_eval_config(
          config.evaluation.gate_threshold,
          gate_metric=config.evaluation.gate_metric),
      example_splits=["eval"]),
      fingerprint.code_fingerprint(EVALUATOR_MODULE)).with_id("Evaluator")
