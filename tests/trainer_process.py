"""Runs TFX's Trainer executor (GenericExecutor + trainer.task.run_fn) on
existing Transform outputs, in its own process so a test can kill it.

  python tests/trainer_process.py ARGS.json

ARGS.json: {"transformed_examples", "transform_graph", "schema": artifact
folders; "model", "model_run": output folders; "custom_config": the
Trainer's custom_config; "train_steps", "eval_steps"}.
"""

import json
import sys

from tfx.components.trainer import executor
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs as specs
from tfx.utils import proto_utils


def _artifact(cls, uri, splits=None):
  artifact = cls()
  artifact.uri = uri
  if splits:
    artifact.split_names = artifact_utils.encode_split_names(splits)
  return artifact


def main(path):
  with open(path) as f:
    args = json.load(f)
  inputs = {
      specs.EXAMPLES_KEY: [_artifact(standard_artifacts.Examples,
                                     args["transformed_examples"],
                                     ["train", "eval"])],
      specs.TRANSFORM_GRAPH_KEY: [_artifact(standard_artifacts.TransformGraph,
                                            args["transform_graph"])],
      specs.SCHEMA_KEY: [_artifact(standard_artifacts.Schema, args["schema"])],
  }
  outputs = {
      specs.MODEL_KEY: [_artifact(standard_artifacts.Model, args["model"])],
      specs.MODEL_RUN_KEY: [_artifact(standard_artifacts.ModelRun,
                                      args["model_run"])],
  }
  exec_properties = {
      specs.RUN_FN_KEY: "trainer.task.run_fn",
      specs.TRAIN_ARGS_KEY: proto_utils.proto_to_json(
          trainer_pb2.TrainArgs(num_steps=args["train_steps"])),
      specs.EVAL_ARGS_KEY: proto_utils.proto_to_json(
          trainer_pb2.EvalArgs(num_steps=args["eval_steps"])),
      specs.CUSTOM_CONFIG_KEY: json.dumps(args["custom_config"]),
  }
  executor.GenericExecutor().Do(inputs, outputs, exec_properties)


if __name__ == "__main__":
  main(sys.argv[1])
