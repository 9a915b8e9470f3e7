"""Compiles the pipeline for Vertex AI Pipelines (Kubeflow Pipelines v2).

  python vertex_runner.py [--config configs/vertex.yaml]
      [--output build/vertex/<pipeline_name>.json]
  CAPTIONER_CONFIG=configs/my.yaml python vertex_runner.py
  tfx pipeline create --engine vertex --pipeline_path vertex_runner.py
  tfx run create --engine vertex --pipeline_name image-captioning-vertex \
      --project my-project --region us-central1

Compiling is offline: nothing is uploaded and no Google Cloud API is called.
The tfx command line runs this file as `__main__` with no arguments and
patches KubeflowV2DagRunner.run() to write the definition to
$VERTEX_HOME/<pipeline_name>/pipeline.json (default ~/tfx/vertex/...), which
`tfx run create` submits; so the config comes from CAPTIONER_CONFIG there,
and run() must be called exactly once.
"""

import argparse
import os
import sys

from absl import logging

from core import config as config_lib
from pipeline import vertex


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--config", default=None,
      help="YAML config (default: $CAPTIONER_CONFIG, else configs/vertex.yaml)")
  parser.add_argument(
      "--output", default=None,
      help="where to write the pipeline JSON "
           "(default: build/vertex/<pipeline_name>.json)")
  args = parser.parse_args(argv)
  try:
    config = config_lib.load(args.config or os.environ.get("CAPTIONER_CONFIG")
                             or vertex.DEFAULT_CONFIG)
    output = args.output or config.resolve(
        os.path.join("build", "vertex", f"{config.pipeline_name}.json"))
    vertex.compile_pipeline(config, output)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")  # A config mistake needs no traceback.
  # Under the tfx command line the patched run() wrote elsewhere (see above).
  logging.info("Compiled pipeline %s", config.pipeline_name)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  main()
