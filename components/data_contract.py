"""DataContractCheck: stops the pipeline before Transform on data that
breaks the data contract.

The contract is the curated schema (ImportSchemaGen's artifact, from
pipeline/schema.pbtxt) plus what a schema cannot state: every image's
`image_features` has the size of the configured extractor's grid stored as
`features.dtype`, and `image_features_shape` holds that grid's values.

Inputs: StatisticsGen's statistics and ExampleValidator's anomalies (each
split's statistics against that schema), and the schema itself. A breach is
  - any anomaly ExampleValidator found for a feature the schema names
    (Transform parses every one of them with its type and value count) or
    for the dataset (e.g. a split without examples);
  - a mean `image_features` size, or `image_features_shape` values (their
    min, max and mean, which is what statistics keep), other than the grid's.
Anomalies of features the schema does not name (a new column, which
Transform never reads) are logged, not acted on.

On a breach the executor raises DataContractError with one line per breach
(split, feature, what was expected, what was found), so the run fails
there; the pipeline makes Transform wait for this component, so Transform,
the Trainer, the Evaluator and the Pusher do not run.

The functions are also the library behind pipeline/validation.py's
`[validate]` lines after a run, so both say the same.
"""

import dataclasses
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
# Not through tfx.v1, which imports its Google Cloud extensions
# (pipeline/pipeline.py).
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.annotations import Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from core import features

# Where a dataset-level anomaly (e.g. no examples at all) is listed.
DATASET = "(dataset)"
# What StatisticsGen and ExampleValidator write in each Split-<name> folder.
STATISTICS_FILE = "FeatureStats.pb"
ANOMALIES_FILE = "SchemaDiff.pb"

FEATURES = features.IMAGE_FEATURES
SHAPE = features.IMAGE_FEATURES_SHAPE

Statistics = statistics_pb2.DatasetFeatureStatisticsList


class DataContractError(ValueError):
  """The examples break the data contract; the message says where."""


@dataclasses.dataclass(frozen=True)
class Anomaly:
  feature: str              # a feature name, or DATASET
  short_description: str
  description: str
  severity: str             # ERROR, WARNING or UNKNOWN
  stops: bool = False       # a breach of the data contract
  expected: str = ""        # what the schema says of the feature, if any

  def text(self, split: str) -> str:
    tail = (f"{self.severity}, breaks the data contract" if self.stops
            else self.severity)
    wanted = f"; the schema expects {self.expected}" if self.expected else ""
    return (f"{split}: {self.feature}: {self.short_description}: "
            f"{self.description}{wanted} ({tail})")


def parse_grid(grid: str) -> Tuple[int, ...]:
  """"7x7x576" -> (7, 7, 576)."""
  try:
    values = tuple(int(x) for x in grid.lower().split("x"))
  except ValueError:
    values = ()
  if len(values) != 3 or min(values) < 1:
    raise ValueError(f"grid {grid!r} is not HxWxC (three positive numbers)")
  return values


def grid_text(grid: Sequence[int]) -> str:
  """(7, 7, 576) -> "7x7x576"."""
  return "x".join(str(int(x)) for x in grid)


def expectations(schema: schema_pb2.Schema) -> Dict[str, str]:
  """Feature name (or DATASET) -> what the schema requires, in words."""
  out = {}
  for feature in schema.feature:
    parts = [schema_pb2.FeatureType.Name(feature.type)]
    if feature.HasField("presence") and feature.presence.min_fraction:
      fraction = feature.presence.min_fraction
      parts.append("in every example" if fraction >= 1.0
                   else f"in at least {fraction:.0%} of the examples")
    if feature.HasField("value_count"):
      low, high = feature.value_count.min, feature.value_count.max
      if high and low == high:
        parts.append(f"exactly {low} value{'s' * (low != 1)}")
      elif low or high:
        parts.append(f"{low}..{high} values" if high
                     else f"at least {low} value{'s' * (low != 1)}")
    if feature.HasField("int_domain") and feature.int_domain.HasField("min"):
      parts.append(f"each at least {feature.int_domain.min}")
    out[feature.name] = ", ".join(parts)
  if schema.dataset_constraints.HasField("min_examples_count"):
    out[DATASET] = (f"at least {schema.dataset_constraints.min_examples_count}"
                    " example(s) in every split")
  return out


def summarize(anomalies: anomalies_pb2.Anomalies,
              schema: schema_pb2.Schema) -> List[Anomaly]:
  """An Anomalies proto (one split, against `schema`) -> one Anomaly per
  reason; those of a feature `schema` names or of the dataset stop the
  run."""
  expected = expectations(schema)
  named = {f.name for f in schema.feature}
  infos = sorted(anomalies.anomaly_info.items())
  if anomalies.HasField("dataset_anomaly_info"):
    infos.append((DATASET, anomalies.dataset_anomaly_info))
  out = []
  for name, info in infos:
    severity = anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)
    stops = name == DATASET or name in named
    reasons = [(r.short_description, r.description) for r in info.reason]
    for short, long in reasons or [(info.short_description,
                                    info.description)]:
      out.append(Anomaly(name, short, long, severity, stops,
                         expected.get(name, "")))
  if anomalies.data_missing and not out:
    out.append(Anomaly(DATASET, "No examples",
                       "the split has no examples (no statistics)", "ERROR",
                       True, expected.get(DATASET, "")))
  return out


def _feature(stats: Statistics, name: str):
  if not stats.datasets:
    return None
  for feature in stats.datasets[0].features:
    if list(feature.path.step) == [name] or feature.name == name:
      return feature
  return None


def _sizes(stats: Statistics) -> Optional[tuple]:
  """(mean bytes of image_features, shape values' min, max, mean)."""
  features = _feature(stats, FEATURES)
  shape = _feature(stats, SHAPE)
  if (features is None or shape is None or not features.HasField(
      "string_stats") or not shape.HasField("num_stats")):
    return None  # the schema's anomalies say what is missing or mistyped
  return (features.string_stats.avg_length, shape.num_stats.min,
          shape.num_stats.max, shape.num_stats.mean)


def _grid_sizes(grid: Sequence[int], dtype: str) -> tuple:
  return (float(math.prod(grid) * np.dtype(dtype).itemsize),
          float(min(grid)), float(max(grid)), sum(grid) / len(grid))


def _size_anomalies(sizes, reference, what, what_shape) -> List[Anomaly]:
  """Feature grids of another size or shape than the reference's."""
  out = []
  if sizes[0] == 0 or not math.isclose(sizes[0], reference[0], rel_tol=1e-6):
    out.append(Anomaly(
        FEATURES, "Unexpected feature size",
        f"{sizes[0]:g} bytes per image on average, {what} has "
        f"{reference[0]:g}", "ERROR", True))
  if not all(math.isclose(a, b, rel_tol=1e-6)
             for a, b in zip(sizes[1:], reference[1:])):
    out.append(Anomaly(
        SHAPE, "Unexpected feature shape",
        f"shape values {sizes[1]:g}..{sizes[2]:g} (mean {sizes[3]:.4g}), "
        f"{what_shape} has {reference[1]:g}..{reference[2]:g} (mean "
        f"{reference[3]:.4g})", "ERROR", True))
  return out


def contract_anomalies(
    statistics: Mapping[str, Statistics],
    schema: schema_pb2.Schema,
    grid: Optional[Sequence[int]] = None,
    dtype: str = features.DEFAULT_FEATURE_DTYPE,
    anomalies: Optional[Mapping[str, anomalies_pb2.Anomalies]] = None,
) -> Dict[str, List[Anomaly]]:
  """Every anomaly of each split, breaches (stops=True) first.

  `anomalies`: ExampleValidator's, per split; a split it lacks is validated
  here against `schema` as ExampleValidator does. The feature grids are
  compared with `grid` (h, w, c) stored as `dtype` when given, else with
  the train split's (or the first split's).
  """
  anomalies = dict(anomalies or {})
  result = {}
  for split in sorted(set(statistics) | set(anomalies)):
    found = anomalies.get(split)
    if found is None:
      found = tfdv.validate_statistics(statistics[split], schema)
    result[split] = summarize(found, schema)

  sizes = {split: _sizes(stats) for split, stats in statistics.items()}
  if grid is not None:
    grid = tuple(int(x) for x in grid)
    reference = _grid_sizes(grid, dtype)
    what_shape = f"the {grid_text(grid)} grid"
    what = f"{what_shape} of {dtype}"
  else:
    first = "train" if sizes.get("train") else next(
        (s for s in sorted(sizes) if sizes[s]), None)
    reference = sizes.get(first)
    what = what_shape = f"the {first} split"
  for split, split_sizes in sizes.items():
    if split_sizes is not None and reference is not None:
      seen = {(a.feature, a.short_description) for a in result[split]}
      result[split] += [a for a in _size_anomalies(split_sizes, reference,
                                                   what, what_shape)
                        if (a.feature, a.short_description) not in seen]
  for found in result.values():
    found.sort(key=lambda a: (not a.stops, a.feature))
  return result


def breaches(anomalies: Mapping[str, Sequence[Anomaly]]) -> List[str]:
  """`<split>: <feature>: ...` for every anomaly that stops the run."""
  return [a.text(split) for split in sorted(anomalies)
          for a in anomalies[split] if a.stops]


def failure_message(anomalies: Mapping[str, Sequence[Anomaly]],
                    grid: Optional[Sequence[int]], dtype: str) -> str:
  against = "the curated schema" + (
      f"; the {grid_text(grid)} grid of {dtype} of features.extractor and "
      "features.dtype" if grid is not None else "")
  return ("DataContractCheck: the examples break the data contract ("
          + against + "), so Transform, the Trainer and the Pusher do not "
          "run:\n  " + "\n  ".join(breaches(anomalies)))


def check(statistics: Mapping[str, Statistics], schema: schema_pb2.Schema,
          grid: Sequence[int], dtype: str,
          anomalies: Optional[Mapping[str, anomalies_pb2.Anomalies]] = None
          ) -> Dict[str, List[Anomaly]]:
  """contract_anomalies(); logs them and raises DataContractError on a
  breach."""
  found = contract_anomalies(statistics, schema, grid, dtype, anomalies)
  for split in sorted(found):
    if not found[split]:
      logging.info("DataContractCheck: %s: no anomalies", split)
    for anomaly in found[split]:
      if not anomaly.stops:
        logging.warning("DataContractCheck (not a breach): %s",
                        anomaly.text(split))
  if breaches(found):
    raise DataContractError(failure_message(found, grid, dtype))
  return found


def _split_names(artifact) -> List[str]:
  return artifact_utils.decode_split_names(artifact.split_names)


def load_statistics(artifact) -> Dict[str, Statistics]:
  """An ExampleStatistics artifact -> split -> statistics."""
  return {split: tfdv.load_stats_binary(os.path.join(
      artifact_utils.get_split_uri([artifact], split), STATISTICS_FILE))
          for split in _split_names(artifact)}


def load_anomalies(artifact) -> Dict[str, anomalies_pb2.Anomalies]:
  """An ExampleAnomalies artifact -> split -> Anomalies."""
  return {split: anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(
      os.path.join(artifact_utils.get_split_uri([artifact], split),
                   ANOMALIES_FILE)))
          for split in _split_names(artifact)}


def load_schema(artifact) -> schema_pb2.Schema:
  """A Schema artifact (one file in its folder) -> Schema."""
  return io_utils.SchemaReader().read(
      io_utils.get_only_uri_in_dir(artifact.uri))


@component
def DataContractCheck(  # pylint: disable=invalid-name
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    schema: InputArtifact[standard_artifacts.Schema],
    grid: Parameter[str],
    dtype: Parameter[str] = (
        features.DEFAULT_FEATURE_DTYPE),
    code_fingerprint: Parameter[str] = "",
) -> None:
  """Fails (DataContractError) when a split breaks the data contract.

  `grid`: the configured extractor's feature grid as "HxWxC"; `dtype`: the
  stored feature dtype (features.dtype). `code_fingerprint`: of this module
  (pipeline/fingerprint.py), read only by TFX's cache key.
  """
  del code_fingerprint
  check(load_statistics(statistics), load_schema(schema), parse_grid(grid),
        dtype, load_anomalies(anomalies))
