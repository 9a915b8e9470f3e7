"""Runs the pipeline locally with LocalDagRunner and Beam's DirectRunner.

  python local_runner.py                 # configs/local.yaml
  CAPTIONER_CONFIG=configs/my.yaml python local_runner.py
  tfx pipeline create --engine local --pipeline_path local_runner.py
  tfx run create --engine local --pipeline_name image-captioning-local

`captioner run` does the same and also prepares the data and reports.
"""

from absl import logging

from core import config as config_lib
from pipeline import local

if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  local.run(config_lib.load())
