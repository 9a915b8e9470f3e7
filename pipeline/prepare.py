"""What `captioner run` checks and prepares before a local run starts.

The dataset must be there (only the bundled sample, `data.root:
build/sample`, is generated when missing), and the configured extractor
must build (and a `data.feature_cache` must have been made with the
config's features), so that a wrong path or weights file fails in seconds,
not minutes into ExampleGen. TFX is not imported for the dataset check.
"""

import os
from typing import Callable, Dict, Optional

from core import config as config_lib
from core import extractors
from ingest import feature_cache
from ingest import readers
from ingest import sample


def sources(config: config_lib.PipelineConfig,
            data_root: str) -> Dict[str, readers.Source]:
  """Split name -> what the readers read for it, from `data.*`."""
  return {name: feature_cache.split_source(config.data.dataset, data_root,
                                           split["annotations"], split)
          for name, split in config.data.splits().items()}


def prepare_data(config: config_lib.PipelineConfig,
                 report: Optional[Callable[[str], None]] = None) -> str:
  """The dataset root, checked before any component runs
  (feature_cache.MissingDataError, naming what is missing, if not).

  Only the bundled default (`data.root: build/sample`) is generated when
  missing (`report` hears so); any other root must hold the dataset its
  config describes.
  """
  data_root = config.resolve(config.data.root)
  if os.path.normpath(config.data.root) == config_lib.SAMPLE_ROOT:
    train_annotations = os.path.join(data_root, config.data.train_annotations)
    if not os.path.exists(train_annotations):
      if report is not None:
        report(f"generating the sample dataset into {data_root}")
      sample.generate(data_root, num_images=config.data.sample_images,
                      seed=config.data.sample_seed)
  if config.data.feature_cache:
    # The examples come from the cache (checked by check_features); the
    # dataset only gives the image captioned at the end.
    return data_root
  feature_cache.check_inputs(sources(config, data_root), "data.root",
                             data_root)
  return data_root


def check_extractor(config: config_lib.PipelineConfig) -> None:
  """Builds the configured extractor once, so that a missing, offline or
  mismatched `features.weights` fails now, not minutes into ExampleGen."""
  features = config.features
  spec = extractors.extractor_spec(features.extractor,
                                   features.patch_image_size,
                                   features.patch_size, features.alpha)
  extractors.build_extractor(spec, features.weights, features.patch_size)


def check_features(config: config_lib.PipelineConfig) -> None:
  """check_extractor, then, with `data.feature_cache`, that the cache was
  made with `features.*` (ValueError or RuntimeError, saying why, if not)."""
  check_extractor(config)
  if config.data.feature_cache:
    from pipeline import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
    pipeline_lib.check_feature_cache(config)
