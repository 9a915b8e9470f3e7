"""Typed pipeline configuration read from the YAML files in `configs/`.

Every section is a pydantic model, strict (a str is no int, a bool no int, an
int no bool) and closed (`extra="forbid"`); loading rejects any key a section
does not declare, or a value of the wrong type, with a message that names the
key by its dotted path (for example `training.epochz`): pydantic's error
locations, put in this module's own words by `_message`.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import pydantic
import yaml

from core import features

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "local.yaml")


class ConfigError(ValueError):
  """A configuration file has an unknown, missing or ill-typed key."""


class _Section(pydantic.BaseModel):
  """A config section: unknown keys and ill-typed values are errors; an empty
  YAML section (`training:`) means its defaults. Not frozen: sections are
  changed with `model_copy(update=...)`, but tests/pipeline set fields."""
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)

  @pydantic.model_validator(mode="before")
  @classmethod
  def _empty_is_defaults(cls, data: Any) -> Any:
    return {} if data is None else data


def _number(value: Any) -> Any:
  # YAML reads 1e-4 (no dot) as a string; accept plain numeric spellings.
  if isinstance(value, str):
    try:
      return float(value)
    except ValueError:
      pass
  return value


# A float that also takes an int (made a float) or a numeric string.
Float = Annotated[float, pydantic.BeforeValidator(_number)]


# The bundled default dataset: the synthetic sample, generated on first use.
SAMPLE_ROOT = "build/sample"


class DataConfig(_Section):
  # Input base: a folder (local or gs://) holding the dataset.
  root: str = SAMPLE_ROOT
  # The layout (ingest/readers.py): coco2017, coco2014, coco (any
  # folder of images with a COCO-format captions file), flickr8k, karpathy.
  dataset: str = "coco2017"
  # Per split: the captions file, the image folder, and which of the file's
  # images: "" (all), Karpathy split names ("train+restval"), a Flickr8k
  # split list (Flickr_8k.trainImages.txt) or "hash:A-B" (id hash buckets
  # A..B of 100). Paths are relative to `root`.
  train_annotations: str = "annotations/captions_train2017.json"
  eval_annotations: str = "annotations/captions_val2017.json"
  train_images: str = "train2017"
  eval_images: str = "val2017"
  train_subset: str = ""
  eval_subset: str = ""
  # The synthetic sample `make run` generates when `root` is the bundled
  # default (SAMPLE_ROOT) and holds no data yet; never into another root.
  sample_images: int = 240
  sample_seed: int = 0
  # A feature cache written by `captioner cache-features` (its --out, local
  # or gs://): when set, the pipeline imports those examples (ImportExampleGen)
  # instead of extracting features, once it has checked that the cache was
  # made with this config's features.*; `root` then only serves the image
  # `captioner run` captions at the end. Its split folders for train, eval:
  feature_cache: str = ""
  feature_cache_train: str = "train"
  feature_cache_eval: str = "val"

  def splits(self) -> dict:
    """Split name -> {annotations, images, subset}, paths under `root`."""
    return {"train": {"annotations": self.train_annotations,
                      "images": self.train_images,
                      "subset": self.train_subset},
            "eval": {"annotations": self.eval_annotations,
                     "images": self.eval_images,
                     "subset": self.eval_subset}}


class FeaturesConfig(_Section):
  # inception_v3, mobilenet, mobilenet_v2, mobilenet_v3_small,
  # mobilenet_v3_large or patches (see core/extractors.py).
  extractor: str = "patches"
  # Width multiplier of mobilenet (0.25..1.0) and mobilenet_v2 (0.35..1.4);
  # it must match the weights file.
  alpha: Float = 1.0
  # "imagenet", a path to a Keras weights file, or "none" (seeded random).
  weights: str = "none"
  # Images per RunInference batch.
  batch_size: int = 16
  # Stored dtype of the feature tensor: float16 (default) or float32.
  dtype: str = features.DEFAULT_FEATURE_DTYPE
  # Input side of the `patches` extractor and its patch size.
  patch_image_size: int = 128
  patch_size: int = 16
  # Images with more pixels are skipped (a decompression-bomb guard).
  max_pixels: int = features.MAX_PIXELS


class VocabConfig(_Section):
  max_tokens: int = 5000
  frequency_threshold: int = 1


class ModelConfig(_Section):
  # transformer (A), show_attend_tell (B) or patch_transformer (C); see
  # trainer/models/.
  architecture: str = "transformer"
  num_layers: int = 2
  units: int = 256
  num_heads: int = 2
  dropout: Float = 0.1
  max_length: int = 50
  # A learned position embedding added to the flattened image grid. The
  # tutorial's model has none; captions that say *where* things are need it.
  image_position_embedding: bool = True
  # A: project the grid's cells to `units` (Dense + ReLU + LayerNorm) once,
  # before the decoder layers; their cross-attention then works at `units`
  # instead of the extractor's depth (1280 channels for MobileNetV2).
  image_projection: bool = False
  # B: the GRU's units (the encoder and embedding use `units`).
  rnn_units: int = 512
  # C: transformer encoder layers over the patch grid before the decoder.
  encoder_layers: int = 2


class TrainingConfig(_Section):
  batch_size: int = 64
  epochs: int = 10
  # Steps an epoch, and validation steps after it; 0: one pass over the
  # training (eval) caption pairs, whatever the dataset's size.
  steps_per_epoch: int = 50
  eval_steps: int = 10
  learning_rate: Float = 1e-3
  # "constant", or "warmup_cosine": linear warm-up over `warmup_steps` to
  # `learning_rate`, then cosine decay to 0 at the last step.
  lr_schedule: str = "constant"
  warmup_steps: int = 0
  early_stopping_patience: int = 5
  shuffle_buffer: int = 2000
  seed: int = 0
  # Where Keras' BackupAndRestore keeps the last epoch's checkpoint so that
  # a rerun resumes; "" = <pipeline_root>/Trainer/backup/<inputs key>.
  backup_dir: str = ""
  # Eval images captioned at temperatures 0, 0.5, 1 after every epoch.
  sample_captions: int = 2
  # Self-critical sequence training after cross-entropy (trainer/scst.py):
  # this many steps (0 = off), each of `scst_batch_size` training images
  # with `scst_samples` sampled captions per image, rewarded by CIDEr-D
  # against the image's references minus the baseline: "mean" (of the
  # image's other samples) or "greedy" (the greedy caption's CIDEr-D).
  scst_steps: int = 0
  scst_samples: int = 5
  scst_baseline: str = "mean"
  scst_batch_size: int = 16
  scst_learning_rate: Float = 5e-5

  @pydantic.field_validator("scst_baseline")
  @classmethod
  def _known_baseline(cls, value: str) -> str:
    if value not in ("mean", "greedy"):
      raise ValueError(f"must be mean or greedy, got {value!r}")
    return value

  @pydantic.model_validator(mode="after")
  def _enough_samples(self):
    if self.scst_steps < 0:
      raise ValueError("scst_steps must be >= 0")
    if self.scst_steps and self.scst_baseline == "mean" and (
        self.scst_samples < 2):
      raise ValueError("scst_samples must be >= 2 with scst_baseline mean")
    if self.scst_steps and self.scst_samples < 1:
      raise ValueError("scst_samples must be >= 1")
    return self


# The metrics the Evaluator can gate on (core/scoring.py's names; the
# Evaluator's components/caption_metrics.GATE_METRICS).
GATE_METRICS = ("bleu_4", "cider_d")


class EvaluationConfig(_Section):
  # The metric that decides the blessing: "bleu_4" or "cider_d". The model
  # is blessed only if, on the eval split, it reaches the metric's bar below
  # and the latest blessed model's score.
  gate_metric: str = "bleu_4"
  # The bar of corpus BLEU-4 (in [0, 1]), when gate_metric is bleu_4.
  bleu4_threshold: Float = 0.05
  # The bar of corpus CIDEr-D (coco-caption's, x10: in [0, 10]), when
  # gate_metric is cider_d.
  cider_d_threshold: Float = 0.1
  # The Evaluator scores beam search of this width (what a beam_search
  # client gets); 0 scores greedy decoding (what serving_default returns).
  beam_width: int = 0

  @pydantic.field_validator("gate_metric")
  @classmethod
  def _known_metric(cls, value: str) -> str:
    if value not in GATE_METRICS:
      raise ValueError(
          f"must be one of {', '.join(GATE_METRICS)}, got {value!r}")
    return value

  @property
  def gate_threshold(self) -> float:
    """The bar of `gate_metric`."""
    return {"bleu_4": self.bleu4_threshold,
            "cider_d": self.cider_d_threshold}[self.gate_metric]


class ServingConfig(_Section):
  # serving_default (what a TF Serving client gets) decodes with beam search
  # of this width; 0 decodes greedily. The beam_search signature takes any.
  beam_width: int = 0


class BeamConfig(_Section):
  # Extra Beam pipeline arguments, e.g. ["--direct_num_workers=2"].
  args: list = ["--direct_running_mode=multi_processing",
                "--direct_num_workers=2"]


class DataflowConfig(_Section):
  """Dataflow workers for the Beam components (pipeline/vertex.py)."""
  machine_type: str = "n1-standard-4"
  max_num_workers: int = 10
  # A gs:// folder for Dataflow's temporary and staging files.
  temp_location: str = ""
  # The workers' image; "" means the pipeline image (`vertex.image`), which
  # already holds the pinned install that setup.py alone cannot reproduce.
  sdk_container_image: str = ""
  # Optional: setup.py inside the pipeline image (e.g. /pipeline/setup.py),
  # to install the project on top of `sdk_container_image`.
  setup_file: str = ""


class VertexTrainingConfig(_Section):
  """The Vertex AI Training worker pool that runs the Trainer."""
  machine_type: str = "n1-standard-8"
  # A Vertex AI accelerator type, e.g. NVIDIA_TESLA_T4; "" trains on CPUs.
  accelerator_type: str = "NVIDIA_TESLA_T4"
  accelerator_count: int = 1
  # Machines in all: one chief plus `replica_count - 1` workers.
  replica_count: int = 1


class VertexConfig(_Section):
  """Vertex AI Pipelines settings, read only by pipeline/vertex.py."""
  project: str = ""
  region: str = "us-central1"
  # The pipeline image built from the Dockerfile: it runs every component,
  # the Dataflow workers and the training pool.
  image: str = ""
  dataflow: DataflowConfig = DataflowConfig()
  training: VertexTrainingConfig = VertexTrainingConfig()


# The custom_config / execution property key of a component's code
# fingerprint (pipeline/fingerprint.py).
CODE_FINGERPRINT_KEY = "code_fingerprint"


class PipelineConfig(_Section):
  pipeline_name: str = "image-captioning-local"
  pipeline_root: str = "build/pipeline_root"
  metadata_path: str = "build/metadata/metadata.db"
  serving_dir: str = "build/serving"
  # TFX reuses a component's earlier output when its inputs, properties and
  # code are unchanged (pipeline/pipeline.py); `captioner run --no-cache`.
  enable_cache: bool = True
  data: DataConfig = DataConfig()
  features: FeaturesConfig = FeaturesConfig()
  vocab: VocabConfig = VocabConfig()
  model: ModelConfig = ModelConfig()
  training: TrainingConfig = TrainingConfig()
  evaluation: EvaluationConfig = EvaluationConfig()
  serving: ServingConfig = ServingConfig()
  beam: BeamConfig = BeamConfig()
  vertex: VertexConfig = VertexConfig()

  def resolve(self, path: str) -> str:
    """A config path made absolute against the repository root (gs:// kept)."""
    if "://" in path or os.path.isabs(path):
      return path
    return os.path.join(REPO_ROOT, path)

  def to_dict(self) -> dict:
    return self.model_dump()

  def trainer_custom_config(self, code_fingerprint: str = "") -> dict:
    """The sections the Trainer's run_fn reads (its `custom_config`), and
    the fingerprint of the trainer's code (pipeline/fingerprint.py) that
    its cache key and its backup key see."""
    sections = {section: getattr(self, section).model_dump()
                for section in ("model", "training", "features", "serving")}
    # Of `evaluation`, only what the export reads: a new bar must not make
    # the Trainer's cache key (and so the model) change.
    sections["evaluation"] = {"beam_width": self.evaluation.beam_width}
    if code_fingerprint:
      sections[CODE_FINGERPRINT_KEY] = code_fingerprint
    return sections


def _message(error: dict) -> str:
  """One pydantic error in the words of the hand-written loader it replaced."""
  loc, value = error["loc"], error["input"]
  dotted = ".".join(str(key) for key in loc)
  section = PipelineConfig
  for key in loc[:-1]:
    section = section.model_fields[key].annotation
  if error["type"] in ("extra_forbidden", "invalid_key"):
    return (f"unknown config key '{dotted}'; known keys here: "
            f"{', '.join(sorted(section.model_fields))}")
  if error["type"] == "model_type":
    return (f"config section '{dotted or '<top>'}' must be a mapping, got "
            f"{type(value).__name__}")
  if error["type"] == "value_error":  # a field validator's own words
    return f"config key '{dotted}' {error['ctx']['error']}"
  expected = section.model_fields[loc[-1]].annotation
  article = ("a " if expected in (list, dict) else
             "an " if expected is int and isinstance(value, bool) else "")
  return (f"config key '{dotted}' must be {article}{expected.__name__}, "
          f"got {type(value).__name__} {value!r}")


def from_dict(data: dict) -> PipelineConfig:
  try:
    return PipelineConfig.model_validate(data)
  except pydantic.ValidationError as e:
    # Every problem, one a line (the first on the line of the file's name).
    raise ConfigError("\n".join(_message(error) for error in e.errors())
                      ) from None


def _read_yaml(path: str, seen=()) -> dict:
  """A YAML file's mapping, merged on top of the file its `base:` names."""
  if path in seen:
    raise ConfigError(f"{path}: `base:` files include each other")
  try:
    with open(path) as f:
      data = yaml.safe_load(f) or {}
  except yaml.YAMLError as e:
    raise ConfigError(f"{path}: not valid YAML: {e}") from e
  except OSError as e:
    raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
  if not isinstance(data, dict):
    raise ConfigError(f"{path}: a config file must be a mapping")
  base = data.pop("base", None)
  if base is None:
    return data
  base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base)
  return _merge(_read_yaml(base_path, seen + (path,)), data)


def load(path: Optional[str] = None, overrides: Optional[dict] = None
        ) -> PipelineConfig:
  """Reads a YAML config; `overrides` is merged in (nested dicts) on top.

  A config may start with `base: other.yaml` (relative to itself) to inherit
  that file and change only some keys.
  """
  path = path or os.environ.get("CAPTIONER_CONFIG") or DEFAULT_CONFIG
  data = _read_yaml(path)
  if overrides:
    data = _merge(data, overrides)
  try:
    return from_dict(data)
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None


def _merge(base: dict, extra: dict) -> dict:
  out = dict(base)
  for key, value in extra.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out
