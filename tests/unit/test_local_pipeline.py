"""The local pipeline's Beam options (pipeline/local.py): TFX is told that the
DirectRunner's workers need nothing built for them, and nothing else
changes."""

import os

from tfx.utils import dependency_utils

from core import config as config_lib
from pipeline import local

SETUP_FILE = f"--setup_file={os.path.join(config_lib.REPO_ROOT, 'setup.py')}"


def test_the_bundled_configs_direct_runner_gets_this_projects_setup_file():
  config = config_lib.load(config_lib.DEFAULT_CONFIG)
  args = local.local_beam_args(config.beam.args)
  assert args == list(config.beam.args) + [SETUP_FILE]
  assert os.path.isfile(SETUP_FILE.split("=", 1)[1])
  # TFX's own check, for real: it keeps the args as they are, so it builds no
  # sdist of itself (it would append --extra_package=<its sdist>).
  assert dependency_utils.make_beam_dependency_flags(args) == args
  beam_args = local.create_local_pipeline(config).beam_pipeline_args
  assert SETUP_FILE in beam_args


def test_named_dependencies_and_other_runners_are_left_alone():
  for given in (["--setup_file=/pipeline/setup.py"],
                ["--extra_package=/tmp/a.tar.gz"],
                ["--sdk_container_image=gcr.io/p/image:1"],
                ["--runner=DataflowRunner", "--project=p"]):
    assert local.local_beam_args(given) == given, given
  for direct in (["--runner=DirectRunner"], ["--runner=direct"], []):
    assert local.local_beam_args(direct) == direct + [SETUP_FILE], direct
