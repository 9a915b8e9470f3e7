"""TFX's Trainer executor on existing Transform outputs, outside a pipeline.

What the Trainer component runs (GenericExecutor calling trainer.task.run_fn),
for a rerun that changes only `model.*` or `training.*`: tuning runs
(benchmarks/quality.py) and the kill-and-resume test.
"""

import json
from typing import Any, Mapping

from tfx.components.trainer import executor
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs as specs
from tfx.utils import proto_utils

RUN_FN = "trainer.task.run_fn"


def _artifact(cls, uri, splits=None):
  artifact = cls()
  artifact.uri = uri
  if splits:
    artifact.split_names = artifact_utils.encode_split_names(splits)
  return artifact


def run_trainer(transformed_examples: str, transform_graph: str, schema: str,
                model: str, model_run: str,
                custom_config: Mapping[str, Any], train_steps: int,
                eval_steps: int) -> None:
  """Trains and exports into `model` (the Model artifact folder: the
  SavedModel lands in `<model>/Format-Serving`)."""
  inputs = {
      specs.EXAMPLES_KEY: [_artifact(standard_artifacts.Examples,
                                     transformed_examples, ["train", "eval"])],
      specs.TRANSFORM_GRAPH_KEY: [_artifact(standard_artifacts.TransformGraph,
                                            transform_graph)],
      specs.SCHEMA_KEY: [_artifact(standard_artifacts.Schema, schema)],
  }
  outputs = {
      specs.MODEL_KEY: [_artifact(standard_artifacts.Model, model)],
      specs.MODEL_RUN_KEY: [_artifact(standard_artifacts.ModelRun,
                                      model_run)],
  }
  exec_properties = {
      specs.RUN_FN_KEY: RUN_FN,
      specs.TRAIN_ARGS_KEY: proto_utils.proto_to_json(
          trainer_pb2.TrainArgs(num_steps=train_steps)),
      specs.EVAL_ARGS_KEY: proto_utils.proto_to_json(
          trainer_pb2.EvalArgs(num_steps=eval_steps)),
      specs.CUSTOM_CONFIG_KEY: json.dumps(dict(custom_config)),
  }
  executor.GenericExecutor().Do(inputs, outputs, exec_properties)
