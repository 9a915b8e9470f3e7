"""The data contract, and what the data validation of a run found.

The contract is the curated TFDV schema in `pipeline/schema.pbtxt`
(SCHEMA_FILE; loaded here as CONTRACT) plus the feature grid of the
configured extractor (`feature_grid`) in `features.dtype`. In the graph
(pipeline/pipeline.py):

  ImportSchemaGen     imports SCHEMA_FILE as the run's schema (for
                      StatisticsGen, ExampleValidator, Transform, Trainer)
  ExampleValidator    each split's statistics against it; writes
                      `<pipeline_root>/ExampleValidator/anomalies/<execution
                      id>/Split-<name>/SchemaDiff.pb` and never stops
  DataContractCheck   (components/data_contract.py) fails the run on a
                      breach; Transform waits for it, so nothing is trained
                      on such data or pushed

A breach is an anomaly of a feature the schema names or of the dataset
(no examples), or an `image_features` size or `image_features_shape` other
than the grid's; ExampleValidator's other anomalies (a new column) are only
shown.

`check_run` (or `check_config_run`) reads the newest run's statistics,
anomalies and schema under a local pipeline root and applies the same check
(components/data_contract.py) for the command line: one `[validate] ...`
line per split or anomaly, and a `[validate] FAILED: ...` line with
`stop=True` when the data breaks the contract (which is why the run failed).
"""

import dataclasses
import glob
import os
from typing import Dict, List, Mapping, Optional, Sequence

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2

from components import data_contract
from core import extractors
from components.data_contract import Anomaly  # pylint: disable=unused-import
from components.data_contract import ANOMALIES_FILE
from components.data_contract import STATISTICS_FILE
from core import features

PREFIX = "[validate]"

# The one place the schema is written down (see its header).
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "schema.pbtxt")
CONTRACT: schema_pb2.Schema = tfdv.load_schema_text(SCHEMA_FILE)

# The component that imports it: the id keeps SchemaGen's artifact paths
# (`<pipeline_root>/SchemaGen/schema/<id>/schema.pbtxt`).
SCHEMA_NODE_ID = "SchemaGen"
SCHEMA_ARTIFACT_FILE = "schema.pbtxt"


@dataclasses.dataclass
class Result:
  """The anomalies of one run, per split, and what to print."""
  anomalies: Dict[str, List[Anomaly]]
  lines: List[str]
  stop: bool                 # some split breaks the data contract


def feature_grid(features) -> tuple:
  """The (h, w, c) feature grid of the configured extractor
  (config.features), i.e. what the Trainer expects."""
  return extractors.extractor_spec(features.extractor,
                                   features.patch_image_size,
                                   features.patch_size, features.alpha).grid


def _newest_run(pattern: str, not_before: Optional[float],
                run=None, node_id: str = "", key: str = "") -> Optional[str]:
  """The newest artifact folder matching `pattern` (not older than
  `not_before`), or, given `run` (pipeline/run_record.RunRecord), the one
  that run used: with caching, that can be an earlier execution's."""
  if run is not None:
    return run.output(node_id, key)
  runs = [p for p in glob.glob(pattern) if os.path.basename(p).isdigit()]
  if not_before is not None:
    runs = [p for p in runs if os.path.getmtime(p) >= not_before]
  return max(runs, key=lambda p: int(os.path.basename(p))) if runs else None


def _split_files(run_dir: str, file_name: str) -> Dict[str, str]:
  return {os.path.basename(os.path.dirname(path))[len("Split-"):]: path
          for path in glob.glob(os.path.join(run_dir, "Split-*", file_name))}


def anomalies_dir(pipeline_root: str, not_before: Optional[float] = None,
                  run=None) -> Optional[str]:
  """The newest ExampleValidator anomalies artifact folder (or `run`'s),
  or None."""
  return _newest_run(
      os.path.join(pipeline_root, "ExampleValidator", "anomalies", "*"),
      not_before, run, "ExampleValidator", "anomalies")


def _read_anomalies(pipeline_root: str, not_before: Optional[float],
                    run=None) -> Optional[Dict[str, anomalies_pb2.Anomalies]]:
  folder = anomalies_dir(pipeline_root, not_before, run)
  if folder is None:
    return None
  result = {}
  for split, path in sorted(_split_files(folder, ANOMALIES_FILE).items()):
    with open(path, "rb") as f:
      result[split] = anomalies_pb2.Anomalies.FromString(f.read())
  return result


def latest_anomalies(pipeline_root: str, not_before: Optional[float] = None
                     ) -> Optional[Dict[str, List[Anomaly]]]:
  """The newest ExampleValidator run's anomalies per split ([] when none;
  stops=True for those of a CONTRACT feature or of the dataset), or None
  when there is no such run (at or after `not_before`, a time).
  `pipeline_root` is a local path."""
  found = _read_anomalies(pipeline_root, not_before)
  if found is None:
    return None
  return {split: data_contract.summarize(anomalies, CONTRACT)
          for split, anomalies in found.items()}


def latest_statistics(pipeline_root: str, not_before: Optional[float] = None,
                      run=None
                      ) -> Optional[Dict[str, statistics_pb2.
                                         DatasetFeatureStatisticsList]]:
  """The newest StatisticsGen run's statistics per split (or `run`'s), or
  None."""
  folder = _newest_run(
      os.path.join(pipeline_root, "StatisticsGen", "statistics", "*"),
      not_before, run, "StatisticsGen", "statistics")
  if folder is None:
    return None
  return {split: tfdv.load_stats_binary(path) for split, path in
          sorted(_split_files(folder, STATISTICS_FILE).items())}


def latest_schema(pipeline_root: str, not_before: Optional[float] = None,
                  run=None) -> schema_pb2.Schema:
  """The schema the newest run (or `run`) imported, else CONTRACT."""
  folder = _newest_run(
      os.path.join(pipeline_root, SCHEMA_NODE_ID, "schema", "*"), not_before,
      run, SCHEMA_NODE_ID, "schema")
  path = folder and os.path.join(folder, SCHEMA_ARTIFACT_FILE)
  return tfdv.load_schema_text(path) if path and os.path.isfile(
      path) else CONTRACT


def contract_anomalies(
    statistics: Mapping[str, statistics_pb2.DatasetFeatureStatisticsList],
    grid: Optional[Sequence[int]] = None,
    dtype: str = features.DEFAULT_FEATURE_DTYPE,
    anomalies: Optional[Mapping[str, anomalies_pb2.Anomalies]] = None,
    schema: Optional[schema_pb2.Schema] = None,
) -> Dict[str, List[Anomaly]]:
  """Each split's anomalies against `schema` (default CONTRACT) and the
  grid, breaches first: DataContractCheck's verdict
  (data_contract.contract_anomalies)."""
  return data_contract.contract_anomalies(
      statistics, CONTRACT if schema is None else schema, grid, dtype,
      anomalies)


def format_lines(anomalies: Mapping[str, Sequence[Anomaly]]) -> List[str]:
  """`[validate] eval: no anomalies` / `[validate] train: captions: ...`."""
  lines = []
  for split in sorted(anomalies):
    if not anomalies[split]:
      lines.append(f"{PREFIX} {split}: no anomalies")
    lines += [f"{PREFIX} {anomaly.text(split)}"
              for anomaly in anomalies[split]]
  return lines


def check_run(pipeline_root: str, grid: Optional[Sequence[int]] = None,
              dtype: str = features.DEFAULT_FEATURE_DTYPE,
              not_before: Optional[float] = None, run=None) -> Result:
  """What DataContractCheck found (or would find) in the newest run under
  `pipeline_root` (a local path): ExampleValidator's anomalies and the
  feature sizes, per split.

  `grid`, `dtype`: the feature grid the Trainer expects (`feature_grid`).
  `not_before`: ignore artifacts older than this time (e.g. when this run
  failed before StatisticsGen). `run` (pipeline/run_record.RunRecord): read
  the artifacts that run used instead (cached ones included). `stop` is True when a split breaks the
  contract; the last line then says so.
  """
  lines = []
  anomalies = _read_anomalies(pipeline_root, not_before, run)
  if anomalies is None:
    lines.append(f"{PREFIX} no ExampleValidator output under {pipeline_root}")
  statistics = latest_statistics(pipeline_root, not_before, run)
  if statistics is None:
    lines.append(f"{PREFIX} no StatisticsGen output under {pipeline_root}")
  found = {}
  if anomalies is not None or statistics is not None:
    found = contract_anomalies(statistics or {}, grid, dtype, anomalies,
                               latest_schema(pipeline_root, not_before, run))
  lines += format_lines(found)
  stop = bool(data_contract.breaches(found))
  if stop:
    lines.append(
        f"{PREFIX} FAILED: the data breaks the data contract "
        "(pipeline/schema.pbtxt"
        + (f", the {data_contract.grid_text(grid)} grid of {dtype}"
           if grid is not None else "")
        + "); DataContractCheck stops the run before Transform, so no model "
        "is trained on it or pushed")
  return Result(found, lines, stop)


def check_config_run(config, not_before: Optional[float] = None,
                     run=None) -> Result:
  """check_run() for a pipeline config (core.config.PipelineConfig):
  its pipeline root, extractor grid and feature dtype."""
  return check_run(config.resolve(config.pipeline_root),
                   feature_grid(config.features), config.features.dtype,
                   not_before, run)
