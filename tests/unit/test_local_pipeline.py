"""The local pipeline (pipeline/local.py): its Beam options tell TFX that the
DirectRunner's workers need nothing built for them, Beam builds nothing
either, and nothing else changes; and building it, with every executor it
runs, imports no Google Cloud client."""

import os
import subprocess
import sys
import textwrap

from tfx.utils import dependency_utils

from core import config as config_lib
from pipeline import local

ADDED = [f"--requirements_file={local.LOCK_FILE}", "--requirements_cache=skip"]


def test_the_bundled_configs_direct_runner_gets_the_lock_as_requirements():
  config = config_lib.load(config_lib.DEFAULT_CONFIG)
  args = local.local_beam_args(config.beam.args)
  assert args == list(config.beam.args) + ADDED
  assert os.path.isfile(local.LOCK_FILE)
  # TFX's own check, for real: it keeps the args as they are, so it builds no
  # sdist of itself (it would append --extra_package=<its sdist>).
  assert dependency_utils.make_beam_dependency_flags(args) == args
  beam_args = local.create_local_pipeline(config).beam_pipeline_args
  assert set(ADDED) <= set(beam_args)
  # Beam's own staging for the DirectRunner's workers, for real: the
  # requirements file alone, nothing built and nothing downloaded.
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  from apache_beam.portability.api import beam_runner_api_pb2  # pylint: disable=g-import-not-at-top
  from apache_beam.transforms import environments  # pylint: disable=g-import-not-at-top
  staged = environments.EmbeddedPythonEnvironment.from_options(
      PipelineOptions(args)).artifacts()
  assert [beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
      a.role_payload).staged_name for a in staged] == ["requirements.txt"]


def test_named_dependencies_and_other_runners_are_left_alone():
  for given in (["--setup_file=/pipeline/setup.py"],
                ["--extra_package=/tmp/a.tar.gz"],
                ["--sdk_container_image=gcr.io/p/image:1"],
                ["--runner=DataflowRunner", "--project=p"]):
    assert local.local_beam_args(given) == given, given
  for direct in (["--runner=DirectRunner"], ["--runner=direct"], []):
    assert local.local_beam_args(direct) == direct + ADDED, direct
  # A requirements cache of the config's own is kept.
  given = ["--requirements_cache=/tmp/cache"]
  assert local.local_beam_args(given) == given + ADDED[:1]


# Builds the local pipeline of the bundled config in a fresh interpreter,
# imports every executor it names (as LocalDagRunner does at run time), and
# prints the Google Cloud modules then loaded.
_CLOUD_MODULES = textwrap.dedent("""
    import importlib, sys
    from captioner import cli
    from core import config as config_lib
    from pipeline import local
    pipeline = local.create_local_pipeline(
        config_lib.load(config_lib.DEFAULT_CONFIG))
    for node in pipeline.components:
      spec = getattr(node, "executor_spec", None)
      if spec is not None:
        importlib.import_module(spec.executor_class.__module__)
    print(len(pipeline.components), sorted(
        m for m in sys.modules
        if m.startswith(("google.cloud.aiplatform", "tfx.v1"))))
""")


def test_a_local_run_imports_neither_tfx_v1_nor_vertex_ai():
  # tfx.v1 imports its Google Cloud extensions, google.cloud.aiplatform
  # among them: seconds of every `captioner run` (BENCHMARKS.md, "The
  # README's two commands"). Only the Vertex AI and Kubeflow runners need it.
  result = subprocess.run([sys.executable, "-c", _CLOUD_MODULES],
                          cwd=config_lib.REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.split("\n")[-2] == "10 []", result.stdout
