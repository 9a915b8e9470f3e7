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
 trainer/models.py."""A configuration file has an unknown, missing or ill-typed key."""


class _Section(pydantic.BaseModel):
 trainer/models.py."""A config section: unknown keys and ill-typed values are errors; an empty
 trainer/models.py.YAML section (`training:`) means its defaults. Not frozen: sections are
 trainer/models.py.changed with `model_copy(update=...)`, but tests/pipeline set fields."""
 trainer/models.py.model_config = pydantic.ConfigDict(extra="forbid", strict=True)

 trainer/models.py.@pydantic.model_validator(mode="before")
 trainer/models.py.@classmethod
 trainer/models.py.def _empty_is_defaults(cls, data: Any) -> Any:
 trainer/models.py.  return {} if data is None else data


def _number(value: Any) -> Any:
 trainer/models.py.# YAML reads 1e-4 (no dot) as a string; accept plain numeric spellings.
 trainer/models.py.if isinstance(value, str):
 trainer/models.py.  try:
 trainer/models.py.    return float(value)
 trainer/models.py.  except ValueError:
 trainer/models.py.    pass
 trainer/models.py.return value


# A float that also takes an int (made a float) or a numeric string.
Float = Annotated[float, pydantic.BeforeValidator(_number)]


# The bundled default dataset: the synthetic sample, generated on first use.
SAMPLE_ROOT = "build/sample"


class DataConfig(_Section):
 trainer/models.py.# Input base: a folder (local or gs://) holding the dataset.
 trainer/models.py.root: str = SAMPLE_ROOT
 trainer/models.py.# The layout (ingest/readers.py): coco2017, coco2014, coco (any
 trainer/models.py.# folder of images with a COCO-format captions file), flickr8k, karpathy.
 trainer/models.py.dataset: str = "coco2017"
 trainer/models.py.# Per split: the captions file, the image folder, and which of the file's
 trainer/models.py.# images: "" (all), Karpathy split names ("train+restval"), a Flickr8k
 trainer/models.py.# split list (Flickr_8k.trainImages.txt) or "hash:A-B" (id hash buckets
 trainer/models.py.# A..B of 100). Paths are relative to `root`.
 trainer/models.py.train_annotations: str = "annotations/captions_train2017.json"
 trainer/models.py.eval_annotations: str = "annotations/captions_val2017.json"
 trainer/models.py.train_images: str = "train2017"
 trainer/models.py.eval_images: str = "val2017"
 trainer/models.py.train_subset: str = ""
 trainer/models.py.eval_subset: str = ""
 trainer/models.py.# The synthetic sample `make run` generates when `root` is the bundled
 trainer/models.py.# default (SAMPLE_ROOT) and holds no data yet; never into another root.
 trainer/models.py.sample_images: int = 240
 trainer/models.py.sample_seed: int = 0
 trainer/models.py.# A feature cache written by `captioner cache-features` (its --out, local
 trainer/models.py.# or gs://): when set, the pipeline imports those examples (ImportExampleGen)
 trainer/models.py.# instead of extracting features, once it has checked that the cache was
 trainer/models.py.# made with this config's features.*; `root` then only serves the image
 trainer/models.py.# `captioner run` captions at the end. Its split folders for train, eval:
 trainer/models.py.feature_cache: str = ""
 trainer/models.py.feature_cache_train: str = "train"
 trainer/models.py.feature_cache_eval: str = "val"

 trainer/models.py.def splits(self) -> dict:
 trainer/models.py.  """Split name -> {annotations, images, subset}, paths under `root`."""
 trainer/models.py.  return {"train": {"annotations": self.train_annotations,
 trainer/models.py.                    "images": self.train_images,
 trainer/models.py.                    "subset": self.train_subset},
 trainer/models.py.          "eval": {"annotations": self.eval_annotations,
 trainer/models.py.                   "images": self.eval_images,
 trainer/models.py.                   "subset": self.eval_subset}}


class FeaturesConfig(_Section):
 trainer/models.py.# inception_v3, mobilenet, mobilenet_v2, mobilenet_v3_small,
 trainer/models.py.# mobilenet_v3_large or patches (see core/extractors.py).
 trainer/models.py.extractor: str = "patches"
 trainer/models.py.# Width multiplier of mobilenet (0.25..1.0) and mobilenet_v2 (0.35..1.4);
 trainer/models.py.# it must match the weights file.
 trainer/models.py.alpha: Float = 1.0
 trainer/models.py.# "imagenet", a path to a Keras weights file, or "none" (seeded random).
 trainer/models.py.weights: str = "none"
 trainer/models.py.# Images per RunInference batch.
 trainer/models.py.batch_size: int = 16
 trainer/models.py.# Stored dtype of the feature tensor: float16 (default) or float32.
 trainer/models.py.dtype: str = features.DEFAULT_FEATURE_DTYPE
 trainer/models.py.# Input side of the `patches` extractor and its patch size.
 trainer/models.py.patch_image_size: int = 128
 trainer/models.py.patch_size: int = 16
 trainer/models.py.# Images with more pixels are skipped (a decompression-bomb guard).
 trainer/models.py.max_pixels: int = features.MAX_PIXELS


class VocabConfig(_Section):
 trainer/models.py.max_tokens: int = 5000
 trainer/models.py.frequency_threshold: int = 1


class ModelConfig(_Section):
 trainer/models.py.# transformer (A), show_attend_tell (B) or patch_transformer (C); see
 trainer/models.py.# trainer/models.py.
 trainer/models.py.architecture: str = "transformer"
 trainer/models.py.num_layers: int = 2
 trainer/models.py.units: int = 256
 trainer/models.py.num_heads: int = 2
 trainer/models.py.dropout: Float = 0.1
 trainer/models.py.max_length: int = 50
 trainer/models.py.# A learned position embedding added to the flattened image grid. The
 trainer/models.py.# tutorial's model has none; captions that say *where* things are need it.
 trainer/models.py.image_position_embedding: bool = True
 trainer/models.py.# A: project the grid's cells to `units` (Dense + ReLU + LayerNorm) once,
 trainer/models.py.# before the decoder layers; their cross-attention then works at `units`
 trainer/models.py.# instead of the extractor's depth (1280 channels for MobileNetV2).
 trainer/models.py.image_projection: bool = False
 trainer/models.py.# B: the GRU's units (the encoder and embedding use `units`).
 trainer/models.py.rnn_units: int = 512
 trainer/models.py.# C: transformer encoder layers over the patch grid before the decoder.
 trainer/models.py.encoder_layers: int = 2


class TrainingConfig(_Section):
 trainer/models.py.batch_size: int = 64
 trainer/models.py.epochs: int = 10
 trainer/models.py.# Steps an epoch, and validation steps after it; 0: one pass over the
 trainer/models.py.# training (eval) caption pairs, whatever the dataset's size.
 trainer/models.py.steps_per_epoch: int = 50
 trainer/models.py.eval_steps: int = 10
 trainer/models.py.learning_rate: Float = 1e-3
 trainer/models.py.# "constant", or "warmup_cosine": linear warm-up over `warmup_steps` to
 trainer/models.py.# `learning_rate`, then cosine decay to 0 at the last step.
 trainer/models.py.lr_schedule: str = "constant"
 trainer/models.py.warmup_steps: int = 0
 trainer/models.py.early_stopping_patience: int = 5
 trainer/models.py.shuffle_buffer: int = 2000
 trainer/models.py.seed: int = 0
 trainer/models.py.# Where Keras' BackupAndRestore keeps the last epoch's checkpoint so that
 trainer/models.py.# a rerun resumes; "" = <pipeline_root>/Trainer/backup/<inputs key>.
 trainer/models.py.backup_dir: str = ""
 trainer/models.py.# Eval images captioned at temperatures 0, 0.5, 1 after every epoch.
 trainer/models.py.sample_captions: int = 2


class EvaluationConfig(_Section):
 trainer/models.py.# The model is blessed only if corpus BLEU-4 on the eval split reaches this.
 trainer/models.py.bleu4_threshold: Float = 0.05
 trainer/models.py.# The Evaluator scores beam search of this width (what a beam_search
 trainer/models.py.# client gets); 0 scores greedy decoding (what serving_default returns).
 trainer/models.py.beam_width: int = 0


class ServingConfig(_Section):
 trainer/models.py.# serving_default (what a TF Serving client gets) decodes with beam search
 trainer/models.py.# of this width; 0 decodes greedily. The beam_search signature takes any.
 trainer/models.py.beam_width: int = 0


class BeamConfig(_Section):
 trainer/models.py.# Extra Beam pipeline arguments, e.g. ["--direct_num_workers=2"].
 trainer/models.py.args: list = ["--direct_running_mode=multi_processing",
 trainer/models.py.              "--direct_num_workers=2"]


class DataflowConfig(_Section):
 trainer/models.py."""Dataflow workers for the Beam components (pipeline/vertex.py)."""
 trainer/models.py.machine_type: str = "n1-standard-4"
 trainer/models.py.max_num_workers: int = 10
 trainer/models.py.# A gs:// folder for Dataflow's temporary and staging files.
 trainer/models.py.temp_location: str = ""
 trainer/models.py.# The workers' image; "" means the pipeline image (`vertex.image`), which
 trainer/models.py.# already holds the pinned install that setup.py alone cannot reproduce.
 trainer/models.py.sdk_container_image: str = ""
 trainer/models.py.# Optional: setup.py inside the pipeline image (e.g. /pipeline/setup.py),
 trainer/models.py.# to install the project on top of `sdk_container_image`.
 trainer/models.py.setup_file: str = ""


class VertexTrainingConfig(_Section):
 trainer/models.py."""The Vertex AI Training worker pool that runs the Trainer."""
 trainer/models.py.machine_type: str = "n1-standard-8"
 trainer/models.py.# A Vertex AI accelerator type, e.g. NVIDIA_TESLA_T4; "" trains on CPUs.
 trainer/models.py.accelerator_type: str = "NVIDIA_TESLA_T4"
 trainer/models.py.accelerator_count: int = 1
 trainer/models.py.# Machines in all: one chief plus `replica_count - 1` workers.
 trainer/models.py.replica_count: int = 1


class VertexConfig(_Section):
 trainer/models.py."""Vertex AI Pipelines settings, read only by pipeline/vertex.py."""
 trainer/models.py.project: str = ""
 trainer/models.py.region: str = "us-central1"
 trainer/models.py.# The pipeline image built from the Dockerfile: it runs every component,
 trainer/models.py.# the Dataflow workers and the training pool.
 trainer/models.py.image: str = ""
 trainer/models.py.dataflow: DataflowConfig = DataflowConfig()
 trainer/models.py.training: VertexTrainingConfig = VertexTrainingConfig()


# The custom_config / execution property key of a component's code
# fingerprint (pipeline/fingerprint.py).
CODE_FINGERPRINT_KEY = "code_fingerprint"


class PipelineConfig(_Section):
 trainer/models.py.pipeline_name: str = "image-captioning-local"
 trainer/models.py.pipeline_root: str = "build/pipeline_root"
 trainer/models.py.metadata_path: str = "build/metadata/metadata.db"
 trainer/models.py.serving_dir: str = "build/serving"
 trainer/models.py.# TFX reuses a component's earlier output when its inputs, properties and
 trainer/models.py.# code are unchanged (pipeline/pipeline.py); `captioner run --no-cache`.
 trainer/models.py.enable_cache: bool = True
 trainer/models.py.data: DataConfig = DataConfig()
 trainer/models.py.features: FeaturesConfig = FeaturesConfig()
 trainer/models.py.vocab: VocabConfig = VocabConfig()
 trainer/models.py.model: ModelConfig = ModelConfig()
 trainer/models.py.training: TrainingConfig = TrainingConfig()
 trainer/models.py.evaluation: EvaluationConfig = EvaluationConfig()
 trainer/models.py.serving: ServingConfig = ServingConfig()
 trainer/models.py.beam: BeamConfig = BeamConfig()
 trainer/models.py.vertex: VertexConfig = VertexConfig()

 trainer/models.py.def resolve(self, path: str) -> str:
 trainer/models.py.  """A config path made absolute against the repository root (gs:// kept)."""
 trainer/models.py.  if "://" in path or os.path.isabs(path):
 trainer/models.py.    return path
 trainer/models.py.  return os.path.join(REPO_ROOT, path)

 trainer/models.py.def to_dict(self) -> dict:
 trainer/models.py.  return self.model_dump()

 trainer/models.py.def trainer_custom_config(self, code_fingerprint: str = "") -> dict:
 trainer/models.py.  """The sections the Trainer's run_fn reads (its `custom_config`), and
 trainer/models.py.  the fingerprint of the trainer's code (pipeline/fingerprint.py) that
 trainer/models.py.  its cache key and its backup key see."""
 trainer/models.py.  sections = {section: getattr(self, section).model_dump()
 trainer/models.py.              for section in ("model", "training", "features", "serving")}
 trainer/models.py.  # Of `evaluation`, only what the export reads: a new bar must not make
 trainer/models.py.  # the Trainer's cache key (and so the model) change.
 trainer/models.py.  sections["evaluation"] = {"beam_width": self.evaluation.beam_width}
 trainer/models.py.  if code_fingerprint:
 trainer/models.py.    sections[CODE_FINGERPRINT_KEY] = code_fingerprint
 trainer/models.py.  return sections


def _message(error: dict) -> str:
 trainer/models.py."""One pydantic error in the words of the hand-written loader it replaced."""
 trainer/models.py.loc, value = error["loc"], error["input"]
 trainer/models.py.dotted = ".".join(str(key) for key in loc)
 trainer/models.py.section = PipelineConfig
 trainer/models.py.for key in loc[:-1]:
 trainer/models.py.  section = section.model_fields[key].annotation
 trainer/models.py.if error["type"] in ("extra_forbidden", "invalid_key"):
 trainer/models.py.  return (f"unknown config key '{dotted}'; known keys here: "
 trainer/models.py.          f"{', '.join(sorted(section.model_fields))}")
 trainer/models.py.if error["type"] == "model_type":
 trainer/models.py.  return (f"config section '{dotted or '<top>'}' must be a mapping, got "
 trainer/models.py.          f"{type(value).__name__}")
 trainer/models.py.expected = section.model_fields[loc[-1]].annotation
 trainer/models.py.article = ("a " if expected in (list, dict) else
 trainer/models.py.           "an " if expected is int and isinstance(value, bool) else "")
 trainer/models.py.return (f"config key '{dotted}' must be {article}{expected.__name__}, "
 trainer/models.py.        f"got {type(value).__name__} {value!r}")


def from_dict(data: dict) -> PipelineConfig:
 trainer/models.py.try:
 trainer/models.py.  return PipelineConfig.model_validate(data)
 trainer/models.py.except pydantic.ValidationError as e:
 trainer/models.py.  # Every problem, one a line (the first on the line of the file's name).
 trainer/models.py.  raise ConfigError("\n".join(_message(error) for error in e.errors())
 trainer/models.py.                    ) from None


def _read_yaml(path: str, seen=()) -> dict:
 trainer/models.py."""A YAML file's mapping, merged on top of the file its `base:` names."""
 trainer/models.py.if path in seen:
 trainer/models.py.  raise ConfigError(f"{path}: `base:` files include each other")
 trainer/models.py.try:
 trainer/models.py.  with open(path) as f:
 trainer/models.py.    data = yaml.safe_load(f) or {}
 trainer/models.py.except yaml.YAMLError as e:
 trainer/models.py.  raise ConfigError(f"{path}: not valid YAML: {e}") from e
 trainer/models.py.except OSError as e:
 trainer/models.py.  raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
 trainer/models.py.if not isinstance(data, dict):
 trainer/models.py.  raise ConfigError(f"{path}: a config file must be a mapping")
 trainer/models.py.base = data.pop("base", None)
 trainer/models.py.if base is None:
 trainer/models.py.  return data
 trainer/models.py.base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base)
 trainer/models.py.return _merge(_read_yaml(base_path, seen + (path,)), data)


def load(path: Optional[str] = None, overrides: Optional[dict] = None
 trainer/models.py.      ) -> PipelineConfig:
 trainer/models.py."""Reads a YAML config; `overrides` is merged in (nested dicts) on top.

 trainer/models.py.A config may start with `base: other.yaml` (relative to itself) to inherit
 trainer/models.py.that file and change only some keys.
 trainer/models.py."""
 trainer/models.py.path = path or os.environ.get("CAPTIONER_CONFIG") or DEFAULT_CONFIG
 trainer/models.py.data = _read_yaml(path)
 trainer/models.py.if overrides:
 trainer/models.py.  data = _merge(data, overrides)
 trainer/models.py.try:
 trainer/models.py.  return from_dict(data)
 trainer/models.py.except ConfigError as e:
 trainer/models.py.  raise ConfigError(f"{path}: {e}") from None


def _merge(base: dict, extra: dict) -> dict:
 trainer/models.py.out = dict(base)
 trainer/models.py.for key, value in extra.items():
 trainer/models.py.  if isinstance(value, dict) and isinstance(out.get(key), dict):
 trainer/models.py.    out[key] = _merge(out[key], value)
 trainer/models.py.  else:
 trainer/models.py.    out[key] = value
 trainer/models.py.return out
