"""Compiles the pipeline for a Kubeflow Pipelines v2 backend and submits it.

  python kfp_runner.py [--config configs/kubeflow.yaml]
      [--output build/kfp/<pipeline_name>.json]          # compile only
  python kfp_runner.py --host http://localhost:8080 [--service-account SA]
      [--namespace NS] [--experiment E] [--run-name R] [--token-file F]
  python kfp_runner.py --host URL --pipeline build/kfp/<name>.json  # as is

For your own KFP cluster, not Vertex AI (vertex_runner.py). Compiling is
offline; only --host sends anything: the pipeline spec and a run to that
KFP API (pipeline/kubeflow.py says what differs from the Vertex JSON).
"""

import argparse
import os
import sys

from absl import logging

from core import config as config_lib
from pipeline import kubeflow


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--config", default=None,
      help="YAML config (default: $CAPTIONER_CONFIG, else "
           "configs/kubeflow.yaml)")
  parser.add_argument(
      "--output", default=None,
      help="where to write the pipeline JSON "
           "(default: build/kfp/<pipeline_name>.json)")
  parser.add_argument(
      "--pipeline", default=None,
      help="submit this compiled pipeline JSON instead of compiling")
  parser.add_argument("--host", default=None,
                      help="the KFP API, e.g. http://localhost:8080 (a "
                           "port-forward of ml-pipeline-ui); without it "
                           "nothing is submitted")
  parser.add_argument("--experiment", default=None,
                      help="default: the pipeline's name")
  parser.add_argument("--run-name", default=None,
                      help="default: the pipeline's name and the UTC time")
  parser.add_argument("--namespace", default=None,
                      help="a multi-user Kubeflow's profile namespace")
  parser.add_argument("--service-account", default=None,
                      help="the Kubernetes service account of the run's pods")
  parser.add_argument("--pipeline-root", default=None,
                      help="gs:// root of the run's artifacts (default: the "
                           "compiled one, the config's pipeline_root)")
  parser.add_argument("--token-file", default=None,
                      help="a file holding a bearer token for the KFP API")
  args = parser.parse_args(argv)
  try:
    job_path = args.pipeline
    if job_path is None:
      config = config_lib.load(args.config
                               or os.environ.get("CAPTIONER_CONFIG")
                               or kubeflow.DEFAULT_CONFIG)
      job_path = args.output or config.resolve(
          os.path.join("build", "kfp", f"{config.pipeline_name}.json"))
      kubeflow.compile_pipeline(config, job_path)
      print(f"Compiled {job_path}")
    if args.host:
      token = None
      if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
          token = f.read().strip()
      result = kubeflow.submit(
          job_path, args.host, experiment=args.experiment,
          run_name=args.run_name, namespace=args.namespace,
          service_account=args.service_account,
          pipeline_root=args.pipeline_root, existing_token=token)
      print(f"Submitted run {result.run_id}")
  except (config_lib.ConfigError, kubeflow.SubmitError) as e:
    sys.exit(f"error: {e}")  # A config or spec mistake needs no traceback.


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  main()
