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
RUNNER = "--runner=FnApiRunner"


def test_the_bundled_configs_direct_runner_gets_the_lock_as_requirements():
  config = config_lib.load(config_lib.DEFAULT_CONFIG)
  args = local.local_beam_args(config.beam.args)
  assert args == [RUNNER] + list(config.beam.args) + ADDED
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
                ["--sdk_container_image=gcr.io/p/image:1"]):
    assert local.local_beam_args(given) == [RUNNER] + given, given
  dataflow = ["--runner=DataflowRunner", "--project=p"]
  assert local.local_beam_args(dataflow) == dataflow
  # A runner on this machine the config names is kept; none is the FnApiRunner.
  for direct in (["--runner=DirectRunner"], ["--runner=direct"],
                 ["--runner=FnApiRunner"]):
    assert local.local_beam_args(direct) == direct + ADDED, direct
  assert local.local_beam_args([]) == [RUNNER] + ADDED
  # A requirements cache of the config's own is kept.
  given = ["--requirements_cache=/tmp/cache"]
  assert local.local_beam_args(given) == [RUNNER] + given + ADDED[:1]


def test_local_jobs_run_on_the_fn_api_runner_and_never_try_prism():
  """The DirectRunner of Beam >= 2.68 tries Prism first, which downloads a
  binary (ingest/local_beam.py). The local pipeline's jobs and the CLI's
  name the runner every figure here was measured on, and TF Transform gives
  it the DirectRunner's TensorFlow config."""
  import argparse  # pylint: disable=g-import-not-at-top
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.portability.fn_api_runner import fn_runner  # pylint: disable=g-import-not-at-top
  from tensorflow_transform.beam import impl as tft_impl  # pylint: disable=g-import-not-at-top
  from captioner import cache_features  # pylint: disable=g-import-not-at-top
  from captioner import cli  # pylint: disable=g-import-not-at-top
  config = config_lib.load(config_lib.DEFAULT_CONFIG)
  defaults = vars(cli.build_parser().parse_args(
      ["cache-features", "--dataset", "coco2017", "--images", "i",
       "--annotations", "a", "--out", "o"]))
  for args in (local.create_local_pipeline(config).beam_pipeline_args,
               cache_features.beam_args(argparse.Namespace(**defaults), [])):
    runner = beam.Pipeline(argv=args).runner
    assert type(runner) is fn_runner.FnApiRunner, args  # pylint: disable=unidiomatic-typecheck
    assert tft_impl._DEFAULT_TENSORFLOW_CONFIG_BY_BEAM_RUNNER_TYPE[  # pylint: disable=protected-access
        type(runner)] is tft_impl._FIXED_PARALLELISM_TF_CONFIG  # pylint: disable=protected-access


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
