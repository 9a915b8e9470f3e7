"""Training speed of model A with and without `model.image_projection`.

  .venv/bin/python benchmarks/image_projection.py --config CONFIG \
      [--pipeline-root ROOT] [--steps 40] [--rounds 4] [--cached-batches 30]

Two captioners compiled from --config, one with `model.image_projection:
false` (every decoder layer's cross-attention keys and values projected
from the extractor's depth: 1280 for MobileNetV2) and one with `true` (the
grid's cells projected to `model.units` once, before the decoder layers),
train on the same batches: the first --cached-batches batches of the
Trainer's input pipeline over the newest Transform output under the
pipeline root, taken once into memory (`train_input.training_batches`), so
that only the model differs. They alternate A B B A for --rounds rounds of
--steps steps after a warm-up that traces each train step; steps per second
are over the steps' own times. Prints each round and the ratio of the
medians (with / without the projection). Results: BENCHMARKS.md.
"""

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from core import config as config_lib
from trainer import task
import train_input


def main(argv=None):
  args = train_input.argument_parser(
      __doc__, rounds=4, cached_batches=30).parse_args(argv)

  config = config_lib.load(args.config)
  if config.model.architecture != "transformer":
    sys.exit(f"model.architecture is {config.model.architecture!r}: "
             "image_projection is model A's (transformer)")
  root = args.pipeline_root or config.resolve(config.pipeline_root)
  batches = train_input.training_batches(config, root, args.cached_batches)
  models = {
      name: task.compiled_captioner(
          config.model.model_copy(update={"image_projection": projection}),
          config.training, batches["vocab_size"], batches["grid"],
          batches["label_counts"])
      for name, projection in (("without", False), ("with", True))}
  print(f"grid {batches['grid']}, units {config.model.units}, vocabulary "
        f"{batches['vocab_size']}, batch {config.training.batch_size}, "
        f"{args.steps} steps x {args.rounds} rounds; cpu threads "
        f"{os.cpu_count()}", flush=True)
  for model in models.values():  # traces each train step
    train_input._steps_per_second(model, batches["memory"], 5)  # pylint: disable=protected-access
  speeds = train_input.alternate(
      list(models.items()), args.rounds,
      lambda model: train_input._steps_per_second(  # pylint: disable=protected-access
          model, batches["memory"], args.steps),
      lambda name: f"{name:7s} image projection")
  without = statistics.median(speeds["without"])
  with_ = statistics.median(speeds["with"])
  print(f"median steps/s: without the image projection {without:.2f}, with "
        f"it {with_:.2f}; ratio {with_ / without:.2f}")


if __name__ == "__main__":
  main()
