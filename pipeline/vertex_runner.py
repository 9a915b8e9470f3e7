"""Compiles the pipeline for Vertex AI Pipelines (Kubeflow Pipelines v2).

  python pipeline/vertex_runner.py [--config configs/vertex.yaml]
      [--output build/vertex/<pipeline_name>.json]
  CAPTIONER_CONFIG=configs/my.yaml python pipeline/vertex_runner.py
  tfx pipeline create --engine vertex --pipeline_path pipeline/vertex_runner.py
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

# Run as a script (or by the tfx command line), Python puts this folder first
# on sys.path, where `pipeline.py` would shadow the `pipeline` package: use
# the repo root.
_HERE = os.path.dirname(os.path.realpath(__file__))
if sys.path and os.path.realpath(sys.path[0] or ".") == _HERE:
  sys.path[0] = os.path.dirname(_HERE)

from absl import logging  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

from captioner import config as config_lib  # pylint: disable=g-import-not-at-top
from pipeline import vertex  # pylint: disable=g-import-not-at-top

DEFAULT_VERTEX_CONFIG = os.path.join(config_lib.REPO_ROOT, "configs",
                                     "vertex.yaml")


def compile_pipeline(config: config_lib.PipelineConfig,
                     output_path: str) -> dict:
  """Writes the pipeline job definition to `output_path`; returns it."""
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image=config.vertex.image),
      output_dir=os.path.dirname(os.path.abspath(output_path)),
      output_filename=os.path.basename(output_path))
  return runner.run(vertex.create_vertex_pipeline(config))


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
                             or DEFAULT_VERTEX_CONFIG)
    output = args.output or config.resolve(
        os.path.join("build", "vertex", f"{config.pipeline_name}.json"))
    compile_pipeline(config, output)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")  # A config mistake needs no traceback.
  # Under the tfx command line the patched run() wrote elsewhere (see above).
  logging.info("Compiled pipeline %s", config.pipeline_name)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  main()
