"""What the data validation of a pipeline run found, and whether it must stop.

Two checks, both over the statistics StatisticsGen computed for each split:

1. ExampleValidator (the standard component, in the graph): each split's
   statistics against the schema SchemaGen inferred. It writes
   `<pipeline_root>/ExampleValidator/anomalies/<execution id>/Split-<name>/
   SchemaDiff.pb` and never stops anything. SchemaGen infers that schema in
   the same run from the statistics of every split (train, then updated with
   eval), so it fits the run's own data and in practice reports nothing;
   it matters once a schema is fixed (e.g. ImportSchemaGen of a curated
   one). Its reports are printed, not acted on.
2. The data contract (`CONTRACT`, below; fixed, not inferred): what
   Transform and the Trainer read. Every split has examples, and every
   example has one `image_id`, one non-empty `image_features` value whose
   size is that of the feature grid, an `image_features_shape` of three
   positive numbers equal to the grid, and at least one caption. Transform
   or the Trainer would fail on data that breaks it with a less clear error,
   or train on it; `check_run` reports the breach and sets `stop`.

Library code: `captioner run` calls `check_run` after the pipeline, prints
`lines` and exits with status 1 when `stop`.
"""

import dataclasses
import glob
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence

import tensorflow_data_validation as tfdv
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2

PREFIX = "[validate]"
# Where a dataset-level anomaly (e.g. no examples at all) is listed.
DATASET = "(dataset)"

ANOMALIES_FILE = "SchemaDiff.pb"
STATISTICS_FILE = "FeatureStats.pb"

# What Transform (trainer/preprocessing.py) and the Trainer (trainer/data.py)
# read from the examples ImageCaptionExampleGen writes. Only these features
# are checked; file_name and image_path are for people and the report.
CONTRACT = text_format.Parse("""
  feature {
    name: "image_id" type: INT
    presence { min_fraction: 1.0 min_count: 1 }
    value_count { min: 1 max: 1 }
  }
  feature {
    name: "image_features" type: BYTES
    presence { min_fraction: 1.0 min_count: 1 }
    value_count { min: 1 max: 1 }
  }
  feature {
    name: "image_features_shape" type: INT
    presence { min_fraction: 1.0 min_count: 1 }
    value_count { min: 3 max: 3 }
    int_domain { min: 1 }
  }
  feature {
    name: "captions" type: BYTES
    presence { min_fraction: 1.0 min_count: 1 }
    value_count { min: 1 }
  }
  dataset_constraints { min_examples_count: 1 }
""", schema_pb2.Schema())

_ITEM_BYTES = {"float16": 2, "float32": 4}


@dataclasses.dataclass(frozen=True)
class Anomaly:
  feature: str              # a feature name, or DATASET
  short_description: str
  description: str
  severity: str             # ERROR, WARNING or UNKNOWN
  stops: bool = False       # a breach of CONTRACT

  def line(self, split: str) -> str:
    tail = (f"{self.severity}, breaks the data contract" if self.stops
            else self.severity)
    return (f"{PREFIX} {split}: {self.feature}: {self.short_description}: "
            f"{self.description} ({tail})")


@dataclasses.dataclass
class Result:
  """The anomalies of one run, per split, and what to print."""
  anomalies: Dict[str, List[Anomaly]]
  lines: List[str]
  stop: bool                 # some split breaks CONTRACT


def summarize(anomalies: anomalies_pb2.Anomalies,
              stops: bool = False) -> List[Anomaly]:
  """An Anomalies proto (one split) -> one Anomaly per reason, by feature."""
  infos = sorted(anomalies.anomaly_info.items())
  if anomalies.HasField("dataset_anomaly_info"):
    infos.append((DATASET, anomalies.dataset_anomaly_info))
  out = []
  for name, info in infos:
    severity = anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)
    reasons = [(r.short_description, r.description) for r in info.reason]
    for short, long in reasons or [(info.short_description,
                                    info.description)]:
      out.append(Anomaly(name, short, long, severity, stops))
  if anomalies.data_missing and not out:
    out.append(Anomaly(DATASET, "No examples",
                       "the split has no examples (no statistics)", "ERROR",
                       stops))
  return out


def _newest_run(pattern: str, not_before: Optional[float]) -> Optional[str]:
  runs = [p for p in glob.glob(pattern) if os.path.basename(p).isdigit()]
  if not_before is not None:
    runs = [p for p in runs if os.path.getmtime(p) >= not_before]
  return max(runs, key=lambda p: int(os.path.basename(p))) if runs else None


def _split_files(run_dir: str, file_name: str) -> Dict[str, str]:
  return {os.path.basename(os.path.dirname(path))[len("Split-"):]: path
          for path in glob.glob(os.path.join(run_dir, "Split-*", file_name))}


def anomalies_dir(pipeline_root: str,
                  not_before: Optional[float] = None) -> Optional[str]:
  """The newest ExampleValidator anomalies artifact folder, or None."""
  return _newest_run(
      os.path.join(pipeline_root, "ExampleValidator", "anomalies", "*"),
      not_before)


def latest_anomalies(pipeline_root: str, not_before: Optional[float] = None
                     ) -> Optional[Dict[str, List[Anomaly]]]:
  """The newest ExampleValidator run's anomalies per split ([] when none),
  or None when there is no such run (at or after `not_before`, a time).
  `pipeline_root` is a local path."""
  run = anomalies_dir(pipeline_root, not_before)
  if run is None:
    return None
  result = {}
  for split, path in sorted(_split_files(run, ANOMALIES_FILE).items()):
    with open(path, "rb") as f:
      result[split] = summarize(anomalies_pb2.Anomalies.FromString(f.read()))
  return result


def latest_statistics(pipeline_root: str, not_before: Optional[float] = None
                      ) -> Optional[Dict[str, statistics_pb2.
                                         DatasetFeatureStatisticsList]]:
  """The newest StatisticsGen run's statistics per split, or None."""
  run = _newest_run(
      os.path.join(pipeline_root, "StatisticsGen", "statistics", "*"),
      not_before)
  if run is None:
    return None
  return {split: tfdv.load_stats_binary(path) for split, path in
          sorted(_split_files(run, STATISTICS_FILE).items())}


def _feature(stats: statistics_pb2.DatasetFeatureStatisticsList, name: str):
  if not stats.datasets:
    return None
  for feature in stats.datasets[0].features:
    if list(feature.path.step) == [name] or feature.name == name:
      return feature
  return None


def _sizes(stats) -> Optional[tuple]:
  """(mean bytes of image_features, shape values' min, max, mean)."""
  features = _feature(stats, "image_features")
  shape = _feature(stats, "image_features_shape")
  if (features is None or shape is None or not features.HasField(
      "string_stats") or not shape.HasField("num_stats")):
    return None  # CONTRACT reports what is missing or of the wrong type
  return (features.string_stats.avg_length, shape.num_stats.min,
          shape.num_stats.max, shape.num_stats.mean)


def _grid_sizes(grid: Sequence[int], dtype: str) -> tuple:
  return (float(math.prod(grid) * _ITEM_BYTES[dtype]), float(min(grid)),
          float(max(grid)), sum(grid) / len(grid))


def _size_anomalies(sizes, reference, what, what_shape) -> List[Anomaly]:
  """Feature grids of another size or shape than the reference's."""
  out = []
  if sizes[0] == 0 or not math.isclose(sizes[0], reference[0], rel_tol=1e-6):
    out.append(Anomaly(
        "image_features", "Unexpected feature size",
        f"{sizes[0]:g} bytes per image on average, {what} has "
        f"{reference[0]:g}", "ERROR", True))
  if not all(math.isclose(a, b, rel_tol=1e-6)
             for a, b in zip(sizes[1:], reference[1:])):
    out.append(Anomaly(
        "image_features_shape", "Unexpected feature shape",
        f"shape values {sizes[1]:g}..{sizes[2]:g} (mean {sizes[3]:.4g}), "
        f"{what_shape} has {reference[1]:g}..{reference[2]:g} (mean "
        f"{reference[3]:.4g})", "ERROR", True))
  return out


def contract_anomalies(
    statistics: Mapping[str, statistics_pb2.DatasetFeatureStatisticsList],
    grid: Optional[Sequence[int]] = None, dtype: str = "float16",
) -> Dict[str, List[Anomaly]]:
  """Each split's breaches of CONTRACT (all with stops=True).

  TFDV validates the statistics against CONTRACT; the size of the feature
  grids, which a schema cannot state, is compared with `grid` (h, w, c)
  stored as `dtype` when given, else with the train split's (or the first
  split's).
  """
  names = {f.name for f in CONTRACT.feature}
  result = {}
  for split, stats in statistics.items():
    anomalies = tfdv.validate_statistics(stats, CONTRACT)
    for name in list(anomalies.anomaly_info):
      if name not in names:  # e.g. "New column" for file_name
        del anomalies.anomaly_info[name]
    result[split] = summarize(anomalies, stops=True)

  sizes = {split: _sizes(stats) for split, stats in statistics.items()}
  if grid is not None:
    grid = tuple(int(x) for x in grid)
    reference = _grid_sizes(grid, dtype)
    what_shape = f"the {'x'.join(map(str, grid))} grid"
    what = f"{what_shape} of {dtype}"
  else:
    first = "train" if sizes.get("train") else next(
        (s for s in sorted(sizes) if sizes[s]), None)
    reference = sizes.get(first)
    what = what_shape = f"the {first} split"
  for split, split_sizes in sizes.items():
    if split_sizes is not None and reference is not None:
      found = {(a.feature, a.short_description) for a in result[split]}
      result[split] += [a for a in _size_anomalies(split_sizes, reference,
                                                   what, what_shape)
                        if (a.feature, a.short_description) not in found]
  return result


def format_lines(anomalies: Mapping[str, Sequence[Anomaly]]) -> List[str]:
  """`[validate] eval: no anomalies` / `[validate] train: captions: ...`."""
  lines = []
  for split in sorted(anomalies):
    if not anomalies[split]:
      lines.append(f"{PREFIX} {split}: no anomalies")
    lines += [anomaly.line(split) for anomaly in anomalies[split]]
  return lines


def check_run(pipeline_root: str, grid: Optional[Sequence[int]] = None,
              dtype: str = "float16",
              not_before: Optional[float] = None) -> Result:
  """The ExampleValidator anomalies and the CONTRACT breaches of the newest
  run under `pipeline_root` (a local path), merged per split.

  `grid`, `dtype`: the feature grid the Trainer expects (the configured
  extractor's). `not_before`: ignore artifacts older than this time (e.g.
  when this run failed before StatisticsGen). `stop` is True when a split
  breaks CONTRACT.
  """
  lines = []
  validator = latest_anomalies(pipeline_root, not_before)
  if validator is None:
    lines.append(f"{PREFIX} no ExampleValidator output under {pipeline_root}")
    validator = {}
  statistics = latest_statistics(pipeline_root, not_before)
  if statistics is None:
    lines.append(f"{PREFIX} no StatisticsGen output under {pipeline_root}")
    statistics = {}
  contract = contract_anomalies(statistics, grid, dtype)
  merged = {}
  for split in sorted(set(validator) | set(contract)):
    breaches = contract.get(split, [])
    seen = {(a.feature, a.short_description) for a in breaches}
    merged[split] = breaches + [
        a for a in validator.get(split, [])
        if (a.feature, a.short_description) not in seen]
    merged[split].sort(key=lambda a: (not a.stops, a.feature))
  lines += format_lines(merged)
  stop = any(a.stops for split in merged.values() for a in split)
  if stop:
    lines.append(f"{PREFIX} FAILED: the data breaks the contract of what "
                 "Transform and the Trainer read (CONTRACT in "
                 "pipeline/validation.py); do not use a model trained on it")
  return Result(merged, lines, stop)
