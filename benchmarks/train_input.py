"""Training speed with the real input pipeline vs. batches already in memory.

  .venv/bin/python benchmarks/train_input.py [--pipeline-root build/pipeline_root]

Uses the newest Transform outputs under the pipeline root (run `make run`
first) and the model and training settings of --config. Both sides train
the same compiled model with Keras `fit`:

  real     trainer/data.caption_pairs: TFXIO over the transformed TFRecords,
           captions split per image, shuffled, padded batches (what run_fn
           trains on);
  memory   the same first --cached-batches batches of that dataset, taken
           once into memory (`take(n).cache()`, filled before timing) and
           repeated: no file reading, parsing or batching left.

The two alternate for --rounds rounds of --steps steps each, after a warm-up
that traces the train step. Steps per second are over the steps' own times
(see `_steps_per_second`); the ratio of the medians (real / memory) is the
share of speed the input pipeline leaves: 1.0 means it costs nothing.
Results: BENCHMARKS.md.
"""

import argparse
import glob
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.util import tfxio_utils
from tfx.components.trainer import fn_args_utils
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from core import config as config_lib
from core import extractors
from trainer import data
from trainer import preprocessing
from trainer import task


def _newest(pattern):
  runs = glob.glob(pattern)
  if not runs:
    sys.exit(f"nothing matches {pattern}: run `make run` (or pass "
             "--pipeline-root) first")
  return max(runs, key=lambda p: int(os.path.basename(p)))


def _data_accessor(examples_uri):
  examples = standard_artifacts.Examples()
  examples.uri = examples_uri
  examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
  return fn_args_utils.DataAccessor(
      tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact(
          [examples], []),
      record_batch_factory=None, data_view_decode_fn=None)


class _StepTimes(keras.callbacks.Callback):
  """Wall time of every training step, the wait for its batch included."""

  def __init__(self):
    super().__init__()
    self.seconds = []

  def on_train_batch_begin(self, batch, logs=None):
    self._started = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.seconds.append(time.perf_counter() - self._started)


def _steps_per_second(model, dataset, steps):
  """Steady-state speed: steps over the sum of their times. Leaves out what
  each fit call pays once before its first step (creating the iterator,
  filling the shuffle buffer: ~2 s for the real pipeline), which the
  Trainer, calling fit once, pays once per training."""
  times = _StepTimes()
  model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0,
            callbacks=[times])
  return steps / sum(times.seconds)


def newest_transform(root):
  """(transformed examples folder, TFTransformOutput) of the newest
  Transform run under a pipeline root."""
  examples_uri = _newest(os.path.join(root, "Transform",
                                      "transformed_examples", "*"))
  transform_output = tft.TFTransformOutput(
      _newest(os.path.join(root, "Transform", "transform_graph", "*")))
  return examples_uri, transform_output


def training_batches(config, root, cached_batches=40):
  """The Trainer's training data from the newest Transform output under
  `root`: {"real": caption_pairs as run_fn trains on them (shuffled,
  seeded), "memory": its first `cached_batches` batches, taken once into
  memory and repeated, "vocab_size", "grid", "label_counts"}."""
  model_cfg, train_cfg, features_cfg = (config.model, config.training,
                                        config.features)
  examples_uri, transform_output = newest_transform(root)
  vocab_size = transform_output.vocabulary_size_by_name(
      preprocessing.VOCAB_NAME)
  spec = extractors.extractor_spec(features_cfg.extractor,
                                   features_cfg.patch_image_size,
                                   features_cfg.patch_size,
                                   features_cfg.alpha)
  train_files = [os.path.join(examples_uri, "Split-train", "*")]
  accessor = _data_accessor(examples_uri)
  schema = transform_output.transformed_metadata.schema
  counts = data.label_counts(data.caption_labels(
      train_files, accessor, schema, train_cfg.batch_size,
      model_cfg.max_length), vocab_size)
  real = data.caption_pairs(train_files, accessor, schema, spec.grid,
                            train_cfg.batch_size, model_cfg.max_length,
                            dtype=features_cfg.dtype,
                            shuffle_buffer=train_cfg.shuffle_buffer,
                            seed=train_cfg.seed)
  memory = real.take(cached_batches).cache()
  for _ in memory:  # fills the cache before anything is timed
    pass
  return {"real": real, "memory": memory.repeat(), "vocab_size": vocab_size,
          "grid": spec.grid, "label_counts": counts}


def input_pipeline_ratio(config, root, steps=40, rounds=3, cached_batches=40):
  """Steps/s with the real input pipeline and with the same batches in
  memory, alternating; returns {"real": [...], "memory": [...]} (one
  figure per round) and prints each round."""
  model_cfg, train_cfg = config.model, config.training
  batches = training_batches(config, root, cached_batches)
  real, memory = batches["real"], batches["memory"]
  vocab_size, grid = batches["vocab_size"], batches["grid"]
  model = task.compiled_captioner(model_cfg, train_cfg, vocab_size, grid,
                                  batches["label_counts"])
  print(f"model {model_cfg.architecture}, grid {grid}, vocabulary "
        f"{vocab_size}, batch {train_cfg.batch_size}, {steps} steps x "
        f"{rounds} rounds; cpu threads {os.cpu_count()}", flush=True)
  _steps_per_second(model, memory, 5)  # traces the train step
  _steps_per_second(model, real, 5)
  return alternate((("real", real), ("memory", memory)), rounds,
                   lambda dataset: _steps_per_second(model, dataset, steps),
                   lambda name: f"{name:6s}")


def alternate(variants, rounds, steps_per_second, label):
  """{name: [steps/s, one per round]} of each (name, value) of `variants`,
  measured by steps_per_second(value) in the order A B B A ...: a machine
  speeding up or slowing down over the run favours neither variant. Prints
  each figure after label(name)."""
  speeds = {name: [] for name, _ in variants}
  for round_ in range(rounds):
    for name, value in variants if round_ % 2 == 0 else variants[::-1]:
      speeds[name].append(steps_per_second(value))
      print(f"round {round_ + 1}: {label(name)} {speeds[name][-1]:.2f} "
            "steps/s", flush=True)
  return speeds


def argument_parser(doc, rounds=3, cached_batches=40):
  """The options of a benchmark that trains on a config's Transform output
  in rounds (this one, image_projection.py)."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--config", default=config_lib.DEFAULT_CONFIG)
  parser.add_argument("--pipeline-root", default=None,
                      help="default: the config's pipeline_root")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--rounds", type=int, default=rounds)
  parser.add_argument("--cached-batches", type=int, default=cached_batches)
  return parser


def main(argv=None):
  args = argument_parser(__doc__).parse_args(argv)

  config = config_lib.load(args.config)
  root = args.pipeline_root or config.resolve(config.pipeline_root)
  speeds = input_pipeline_ratio(config, root, args.steps, args.rounds,
                                args.cached_batches)
  real_speed = statistics.median(speeds["real"])
  memory_speed = statistics.median(speeds["memory"])
  print(f"median steps/s: real input pipeline {real_speed:.2f}, in memory "
        f"{memory_speed:.2f}; ratio {real_speed / memory_speed:.3f}")


if __name__ == "__main__":
  main()
