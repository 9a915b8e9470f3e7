"""Runs TFX's Trainer executor (trainer/standalone.py) on existing Transform
outputs, in its own process so a test can kill it.

  python tests/helpers/trainer_process.py ARGS.json

ARGS.json: {"transformed_examples", "transform_graph", "schema": artifact
folders; "model", "model_run": output folders; "custom_config": the
Trainer's custom_config; "train_steps", "eval_steps"}.
"""

import json
import sys

from trainer import standalone


def main(path):
  with open(path) as f:
    args = json.load(f)
  standalone.run_trainer(**args)


if __name__ == "__main__":
  main(sys.argv[1])
