"""Caption decoding speed: the tutorial's method against our served decoder.

  .venv/bin/python benchmarks/decode.py [--config configs/local.yaml] \
      [--model build/serving/<version>] [--pipeline-root build/pipeline_root]

Run `make run` first: it uses the newest pushed model (or --model) and the
eval images of the newest ImageCaptionExampleGen run (their cached features
and their JPEG files). Both sides use the same trained weights: the served
SavedModel, and a Keras captioner and extractor built from --config with the
SavedModel's variables read into them (checkpoint restore). Every method's
captions must equal the served `from_features` captions, or the benchmark
stops: the speeds compare the same work.

(a) From cached features, per caption:
  tutorial      the "Image captioning with visual attention" tutorial's
                `simple_gen`: a Python loop calling the Keras model eagerly
                on the whole prefix, one token and one image at a time,
                stopping at [END];
  full prefix   the same re-run of the whole prefix, but batched inside one
                traced tf.while_loop (`decode_full_prefix`, the tests'
                oracle in tests/helpers/decoding_oracles.py): what tracing alone
                buys, without the cache;
  ours          the SavedModel's `from_features` signature: the cached
                in-graph greedy decoder.
  at batch 1 (each image its own call) and batch --batch (one call).

(b) End to end from JPEG bytes: the tutorial (decode + resize, eager
extractor call, the loop above) against `serving_default` at batch 1 and
--batch.

Each measurement is the median over --rounds rounds of the same images after
a warm-up call; the ratio is tutorial time / method time per caption.
Results: BENCHMARKS.md.
"""

import argparse
import glob
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf

from core import config as config_lib
from core import extractors
from core import text
from tests.helpers import decoding_oracles
from trainer import data
from trainer import export
from trainer import models


def _newest(pattern, what):
  runs = [p for p in glob.glob(pattern) if os.path.basename(p).isdigit()]
  if not runs:
    sys.exit(f"no {what} at {pattern}: run `make run` first (or pass "
             "--model / --pipeline-root)")
  return max(runs, key=lambda p: int(os.path.basename(p)))


def _eval_examples(pipeline_root, count, dtype="float16"):
  """(feature grids float32 [n, h, w, c], JPEG bytes [n]) of the first
  `count` eval images (by id), cycled if the split is smaller."""
  run = _newest(os.path.join(pipeline_root, "ImageCaptionExampleGen",
                             "examples", "*"), "ImageCaptionExampleGen output")
  files = sorted(glob.glob(os.path.join(run, "Split-eval", "*")))
  rows = []
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    example = tf.train.Example.FromString(record.numpy())
    feature = example.features.feature
    rows.append((feature["image_id"].int64_list.value[0],
                 feature["image_features"].bytes_list.value[0],
                 list(feature["image_features_shape"].int64_list.value),
                 feature["image_path"].bytes_list.value[0].decode()))
  if not rows:
    sys.exit(f"no eval examples in {run}")
  rows.sort()
  rows = [rows[i % len(rows)] for i in range(count)]
  grid = rows[0][2]
  grids = data.decode_features([r[1] for r in rows], grid, dtype).numpy()
  jpegs = [tf.io.gfile.GFile(r[3], "rb").read() for r in rows]
  return grids, jpegs, len({r[0] for r in rows})


def _restored(config, model_dir, vocab_size, grid):
  """A Keras captioner and extractor holding the SavedModel's weights."""
  captioner = models.build_captioner(config.model, vocab_size, grid)
  captioner((np.zeros((1, *grid), np.float32),
             np.full((1, 1), text.START_ID, np.int64)))
  spec = extractors.extractor_spec(config.features.extractor,
                                   config.features.patch_image_size,
                                   config.features.patch_size,
                                   config.features.alpha)
  extractor = extractors.build_extractor(spec, extractors.WEIGHTS_NONE,
                                         config.features.patch_size)
  export.restore_keras_weights(model_dir, captioner, extractor)
  return captioner, extractor, spec


def tutorial_tokens(captioner, features, max_length):
  """The tutorial's simple_gen (temperature 0), from one image's features:
  re-runs the model on the whole prefix for every new token."""
  tokens = tf.constant([[text.START_ID]], tf.int64)        # (1, sequence)
  image = features[tf.newaxis, ...]
  for _ in range(max_length - 1):
    preds = captioner((image, tokens)).numpy()              # (1, seq, vocab)
    preds = preds[:, -1, :]
    next_id = tf.argmax(preds, axis=-1)[:, tf.newaxis]      # (1, 1)
    tokens = tf.concat([tokens, next_id], axis=1)
    if next_id[0] == text.END_ID:
      break
  return tokens[0, 1:].numpy()


def _timed(fn, rounds):
  """Median seconds of fn() over rounds, after one warm-up call; and its
  result."""
  result = fn()
  seconds = []
  for _ in range(rounds):
    started = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - started)
  return statistics.median(seconds), result


def _batches(items, size):
  return [items[i:i + size] for i in range(0, len(items), size)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=config_lib.DEFAULT_CONFIG)
  parser.add_argument("--model", default=None,
                      help="SavedModel folder (default: the newest version "
                      "under the config's serving_dir)")
  parser.add_argument("--pipeline-root", default=None,
                      help="default: the config's pipeline_root")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)

  config = config_lib.load(args.config)
  model_dir = args.model or _newest(
      os.path.join(config.resolve(config.serving_dir), "*"), "pushed model")
  pipeline_root = args.pipeline_root or config.resolve(config.pipeline_root)
  served = tf.saved_model.load(model_dir)
  from_features = served.signatures["from_features"]
  serving_default = served.signatures["serving_default"]
  grid = from_features.structured_input_signature[1][
      "image_features"].shape.as_list()[1:]
  with tf.io.gfile.GFile(os.path.join(model_dir, "assets",
                                      "caption_vocab")) as f:
    vocabulary = f.read().splitlines()
  captioner, extractor, spec = _restored(config, model_dir, len(vocabulary),
                                         grid)
  max_length = config.model.max_length
  n = args.batch
  grids, jpegs, distinct = _eval_examples(pipeline_root, n,
                                         config.features.dtype)
  print(f"model {model_dir} ({config.model.architecture}, grid {grid}, "
        f"vocabulary {len(vocabulary)}, max_length {max_length}); {n} eval "
        f"images ({distinct} distinct); {args.rounds} rounds; "
        f"{os.cpu_count()} cpu threads", flush=True)

  def served_captions(fn, inputs, size):
    return [c.decode() for batch in _batches(inputs, size)
            for c in fn(tf.constant(batch))["caption"].numpy()]

  reference = served_captions(from_features, grids, n)
  lengths = [len(c.split()) for c in reference]
  print(f"captions: mean {np.mean(lengths):.1f} words (min {min(lengths)}, "
        f"max {max(lengths)}); e.g. \"{reference[0]}\"", flush=True)

  full_prefix = tf.function(
      lambda g: decoding_oracles.decode_full_prefix(captioner, g, max_length),
      input_signature=[tf.TensorSpec([None, *grid], tf.float32)])

  def caption(ids):
    return text.ids_to_caption(ids, vocabulary)

  def tutorial_from_features():
    return [caption(tutorial_tokens(captioner, g, max_length)) for g in grids]

  def full_prefix_captions(size):
    return lambda: [caption(row)
                    for batch in _batches(grids, size)
                    for row in full_prefix(tf.constant(batch)).numpy()]

  def tutorial_end_to_end():
    captions = []
    for jpeg in jpegs:
      image = extractors.load_image(tf.constant(jpeg), spec.image_size)
      features = extractor(image[tf.newaxis, ...])[0]
      # Served features are rounded as the cache stored them.
      features = data.round_like_cache(features, config.features.dtype)
      captions.append(caption(tutorial_tokens(captioner, features,
                                              max_length)))
    return captions

  rows = []  # (part, method, batch, seconds per caption)

  def measure(part, method, batch, fn, expected):
    seconds, captions = _timed(fn, args.rounds)
    if captions != expected:
      bad = next(i for i, (a, b) in enumerate(zip(captions, expected))
                 if a != b)
      sys.exit(f"{method} (batch {batch}) captions image {bad} "
               f"{captions[bad]!r}, the served model {expected[bad]!r}: the "
               "methods do not decode the same weights the same way")
    rows.append((part, method, batch, seconds / len(captions)))
    print(f"{part} {method:12s} batch {batch:3d}: "
          f"{1000 * seconds / len(captions):9.2f} ms per caption", flush=True)

  measure("a", "tutorial", 1, tutorial_from_features, reference)
  for size in (1, n):
    measure("a", "full prefix", size, full_prefix_captions(size), reference)
  for size in (1, n):
    measure("a", "ours", size,
            lambda s=size: served_captions(from_features, grids, s), reference)

  end_to_end = served_captions(serving_default, jpegs, n)
  measure("b", "tutorial", 1, tutorial_end_to_end, end_to_end)
  for size in (1, n):
    measure("b", "ours", size,
            lambda s=size: served_captions(serving_default, jpegs, s),
            end_to_end)
  if end_to_end != reference:
    print("note: captions from JPEG bytes differ from those of the cached "
          "features on "
          f"{sum(a != b for a, b in zip(end_to_end, reference))} images "
          "(the cache was built from the original files with the same "
          "extractor; differences come from float rounding)")

  print("\n| part | method | batch | ms per caption | speed-up vs tutorial |")
  print("|---|---|---:|---:|---:|")
  baseline = {part: seconds for part, method, _, seconds in rows
              if method == "tutorial"}
  for part, method, batch, seconds in rows:
    print(f"| {part} | {method} | {batch} | {1000 * seconds:.2f} | "
          f"{baseline[part] / seconds:.1f}x |")


if __name__ == "__main__":
  main()
