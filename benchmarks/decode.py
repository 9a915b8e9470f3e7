"""Caption decoding speed: the tutorial's method against our served decoder.

  .venv/bin/python benchmarks/decode.py --config CONFIG --model SAVEDMODEL \
      [--photos] [--images 32] [--batch 32] [--beam-width 3] [--rounds 3] \
      [--compare LABEL=SAVEDMODEL ...] [--profile] [--full-prefix]

Both sides use the same trained weights: a Keras captioner and extractor
built from --config with the SavedModel's (--model's) variables read into
them (checkpoint restore), and a SavedModel exported from that Keras model
by this checkout's export code into a temporary folder ("ours": the served
graph as this code builds it; --model itself may hold an older graph).

Images: with --photos, the first --images photos (by name) of the config's
eval split (`data.eval_subset`, e.g. Flickr8k's dev list), read from
`data.root` and run through the restored extractor, rounded as the feature
cache stores them; without it, the eval examples of the newest
ImageCaptionExampleGen run under --pipeline-root (or the config's), as
`make run` leaves them.

Measured from the feature grids, per caption:
  tutorial      the "Image captioning with visual attention" tutorial's
                `simple_gen` (temperature 0): a Python loop calling the
                Keras model eagerly on the whole prefix, one token and one
                image at a time, stopping at [END];
  full prefix   (--full-prefix) the same re-run of the whole prefix, batched
                inside one traced tf.while_loop (`decode_full_prefix`, the
                tests' oracle in tests/helpers/decoding_oracles.py);
  ours greedy   the exported SavedModel's `from_features` (greedy);
  ours beam K   its `from_examples` with an eval beam width of K (the same
                grids serialized as the feature cache stores them);
  LABEL ...     --model itself and every --compare SavedModel, through the
                same two signatures (what each one's from_features and
                from_examples decode with is read from its beam-width
                variables and named in the row).
at batch 1 (each image its own call) and --batch (one call per batch).

Greedy captions of every method must equal the tutorial's, and beam
captions those of `ours beam K`, or the benchmark stops (for --compare and
--model rows, a difference is printed instead: an older graph may round
differently). --profile times one decoding step's parts (see `profile`).

Every method is called once first (a warm-up, whose captions are the ones
checked); then the --rounds rounds run interleaved, each round calling every
method in turn, in the opposite order every other round (A B C, C B A, ...),
so a machine that speeds up or slows down during the run moves every method
alike. Each figure is the median over the rounds; the ratio is tutorial time
/ method time per caption.
--export-to DIR only writes the SavedModel (greedy from_features, beam K
from_examples) to DIR and exits: run it from another checkout to --compare
that checkout's decoder in the same run. Results: BENCHMARKS.md.
"""

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf

from core import config as config_lib
from core import extractors
from core import features as features_lib
from core import text
from tests.helpers import decoding_oracles
from trainer import data
from trainer import export


def _newest(pattern, what):
  runs = [p for p in glob.glob(pattern) if os.path.basename(p).isdigit()]
  if not runs:
    sys.exit(f"no {what} at {pattern}: run `make run` first (or pass "
             "--model / --pipeline-root / --photos)")
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


def _photos(config, extractor, spec, count):
  """(grids float32 [n, h, w, c] as served, after the extractor and the
  cache's rounding; names) of the first `count` photos of the eval split."""
  data_cfg = config.data
  root = config.resolve(data_cfg.root)
  folder = os.path.join(root, data_cfg.eval_images)
  if data_cfg.eval_subset:
    with open(os.path.join(root, data_cfg.eval_subset)) as f:
      names = sorted(line.strip() for line in f if line.strip())
  else:
    names = sorted(os.listdir(folder))
  names = names[:count]
  grids = []
  for start in range(0, len(names), 16):
    images = tf.stack([
        extractors.load_image(
            tf.io.read_file(os.path.join(folder, name)), spec.image_size)
        for name in names[start:start + 16]])
    grids.append(data.round_like_cache(extractor(images, training=False),
                                       config.features.dtype).numpy())
  return np.concatenate(grids), names


def _export(path, config, captioner, extractor, spec, model_dir, beam_width):
  """This checkout's SavedModel of the restored weights: greedy
  from_features, beam `beam_width` from_examples."""
  export.export(path, captioner, extractor, spec.image_size,
                os.path.join(model_dir, "assets", "caption_vocab"),
                config.model.max_length,
                max_pixels=config.features.max_pixels,
                feature_dtype=config.features.dtype,
                eval_beam_width=beam_width, serving_beam_width=0)


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


def interleaved_rounds(fns, rounds):
  """Seconds of each of fns in each of `rounds` rounds; each round calls
  every fn once, in the opposite order every other round."""
  seconds = [[] for _ in fns]
  for round_ in range(rounds):
    order = range(len(fns)) if round_ % 2 == 0 else reversed(range(len(fns)))
    for i in order:
      started = time.perf_counter()
      fns[i]()
      seconds[i].append(time.perf_counter() - started)
  return seconds


def _batches(items, size):
  return [items[i:i + size] for i in range(0, len(items), size)]


def _serialized(grids, dtype):
  """Grids as the feature cache's tf.Examples (what from_examples reads)."""
  np_dtype = np.float16 if dtype == "float16" else np.float32
  return np.array([tf.train.Example(features=tf.train.Features(feature={
      features_lib.IMAGE_FEATURES: tf.train.Feature(
          bytes_list=tf.train.BytesList(
              value=[g.astype(np_dtype).tobytes()]))})).SerializeToString()
                   for g in grids], dtype=object)


def _median_call(fn, rounds=200):
  fn()
  seconds = []
  for _ in range(rounds):
    started = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - started)
  return statistics.median(seconds)


def profile(captioner, grids, max_length,
            batches=((1, 1), (32, 1), (32, 3))):
  """One decoding step of model A, timed by parts (each its own traced
  function, median of 200 calls) for the given (images, rows per image):
  greedy at 1 and 32 images, beam search's 3 beams of 32 images (96 rows,
  the image's keys and values shared as beam_search shares them): the
  whole step; embedding; per decoder layer,
  self-attention with its cache write, cross-attention, feed-forward; the
  output layer (units x vocabulary); the greedy choice. Every part uses
  the weights the decoding loop reads once (`decoding_step`). The parts'
  sum against the whole step shows what dispatch between them costs."""
  if not hasattr(captioner, "decoder_layers"):
    print("profile: model A / C only")
    return
  print(f"\nprofile: one step at position {max_length // 4} (ms, median of "
        "200 calls)", flush=True)
  position = tf.constant(max_length // 4)
  layer = captioner.decoder_layers[0]
  weights = {"embedding": captioner.seq_embedding.step_weights(),
             "layer": layer.step_weights(),
             "output": captioner.output_layer.step_weights()}
  for images, beams in batches:
    image = tf.constant(np.resize(grids, (images, *grids.shape[1:])))
    batch = images * beams
    token = tf.fill([batch], tf.constant(text.START_ID + 2, tf.int64))
    # The cache of the positions before `position` (the self-attention
    # keys and values grow a position a step).
    cache = captioner.start_beam_cache(image, beams, max_length)
    step = captioner.decoding_step()
    for i in range(int(position)):
      _, cache, _ = step(token, i, cache)
    x = captioner.seq_embedding.step(token, position, weights["embedding"])
    parts = {
        "whole step": tf.function(lambda: step(token, position, cache)[0]),
        "embedding": tf.function(
            lambda: captioner.seq_embedding.step(token, position,
                                                 weights["embedding"])),
        "self-attention + cache write": tf.function(
            lambda: layer.self_attention.step(x, cache[0]["self"],
                                              weights["layer"]["self"])),
        "cross-attention": tf.function(
            lambda: layer.cross_attention.step(
                x, cache[0]["image"], weights["layer"]["cross"])),
        "feed-forward": tf.function(
            lambda: layer.ff.step(x, weights["layer"]["ff"])),
        "output layer": tf.function(
            lambda: captioner.output_layer.step(x, weights["output"])),
        "argmax": tf.function(lambda: tf.argmax(
            captioner.output_layer.step(x, weights["output"]), axis=-1)),
    }
    times = {name: 1000 * _median_call(fn) for name, fn in parts.items()}
    layers_n = len(captioner.decoder_layers)
    per_layer = ("self-attention + cache write", "cross-attention",
                 "feed-forward")
    total = (times["embedding"] + layers_n * sum(times[p] for p in per_layer)
             + times["output layer"])
    print(f"  batch {images:3d} x {beams}: " + ", ".join(
        f"{name} {t:.3f}" for name, t in times.items())
          + f"; parts summed for {layers_n} layers {total:.3f}", flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=config_lib.DEFAULT_CONFIG)
  parser.add_argument("--model", default=None,
                      help="SavedModel folder whose weights are measured "
                      "(default: the newest version under the config's "
                      "serving_dir)")
  parser.add_argument("--pipeline-root", default=None,
                      help="default: the config's pipeline_root")
  parser.add_argument("--photos", action="store_true",
                      help="the config's eval-split photos, not the "
                      "pipeline's eval examples")
  parser.add_argument("--images", type=int, default=None,
                      help="how many images (default: --batch)")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--beam-width", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--compare", action="append", default=[],
                      metavar="LABEL=SAVEDMODEL")
  parser.add_argument("--export-to", default=None,
                      help="only export the model with this checkout's code "
                      "to this folder (a --compare baseline), then exit")
  parser.add_argument("--profile", action="store_true")
  parser.add_argument("--full-prefix", action="store_true")
  parser.add_argument("--skip-tutorial-batch", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  config = config_lib.load(args.config)
  model_dir = args.model or _newest(
      os.path.join(config.resolve(config.serving_dir), "*"), "pushed model")
  captioner, extractor, spec, vocabulary, grid = export.restore_captioner(
      model_dir, config.model, config.features)
  max_length = config.model.max_length
  if args.export_to:
    _export(args.export_to, config, captioner, extractor, spec, model_dir,
            args.beam_width)
    print(f"exported to {args.export_to}")
    return
  n = args.images or args.batch
  if args.photos:
    grids, names = _photos(config, extractor, spec, n)
    source = f"{n} eval-split photos ({names[0]} ...)"
  else:
    pipeline_root = args.pipeline_root or config.resolve(config.pipeline_root)
    grids, _, distinct = _eval_examples(pipeline_root, n,
                                        config.features.dtype)
    source = f"{n} eval examples ({distinct} distinct)"
  examples = _serialized(grids, config.features.dtype)
  print(f"model {model_dir} ({config.model.architecture}, grid {grid}, "
        f"vocabulary {len(vocabulary)}, max_length {max_length}); {source}; "
        f"{args.rounds} rounds; {os.cpu_count()} cpu threads", flush=True)

  started = time.perf_counter()
  ours_dir = tempfile.mkdtemp(prefix="decode-benchmark-")
  _export(ours_dir, config, captioner, extractor, spec, model_dir,
          args.beam_width)
  print(f"exported this checkout's SavedModel in "
        f"{time.perf_counter() - started:.0f} s", flush=True)
  targets = [("ours", ours_dir)] + [
      tuple(c.split("=", 1)) for c in args.compare] + [("model", model_dir)]

  def caption(ids):
    return text.ids_to_caption(ids, vocabulary)

  def served_captions(fn, inputs, size):
    # By the input's name, as TF Serving's clients call: a signature called
    # with a positional tensor first fails to bind it to the structured
    # signature, and that failure's message formats the whole tensor
    # (about 90 ms for 32 serialized grids, measured in the loaded
    # SavedModel) before the flat signature takes it.
    name, = fn.structured_input_signature[1]
    return [c.decode() for batch in _batches(inputs, size)
            for c in fn(**{name: tf.constant(batch)})["caption"].numpy()]

  def tutorial():
    return [caption(tutorial_tokens(captioner, g, max_length)) for g in grids]

  measured = []  # (method, batch, fn, captions per call)
  references = {}

  def measure(method, batch, fn, expected=None, strict=True):
    """The warm-up call, whose captions are checked; timed later, with the
    others (interleaved_rounds)."""
    captions = fn()
    note = ""
    if expected is not None and captions != expected:
      bad = [i for i, (a, b) in enumerate(zip(captions, expected)) if a != b]
      message = (f"{method} (batch {batch}) captions image {bad[0]} "
                 f"{captions[bad[0]]!r}, the reference "
                 f"{expected[bad[0]]!r} ({len(bad)} of {len(captions)} "
                 "differ)")
      if strict:
        sys.exit(message + ": the methods do not decode the same weights "
                 "the same way")
      print("note: " + message, flush=True)
      note = f" ({len(bad)} captions differ)"
    measured.append((method + note, batch, fn, len(captions)))
    print(f"{method:28s} batch {batch:3d}: checked", flush=True)
    return captions

  references["greedy"] = measure("tutorial simple_gen", 1, tutorial)
  lengths = [len(c.split()) for c in references["greedy"]]
  print(f"captions: mean {np.mean(lengths):.1f} words (min {min(lengths)}, "
        f"max {max(lengths)}); e.g. \"{references['greedy'][0]}\"",
        flush=True)
  if args.full_prefix:
    full_prefix = tf.function(
        lambda g: decoding_oracles.decode_full_prefix(captioner, g,
                                                      max_length),
        input_signature=[tf.TensorSpec([None, *grid], tf.float32)])
    for size in (1, args.batch):
      measure("full prefix", size, lambda s=size: [
          caption(row) for batch in _batches(grids, s)
          for row in full_prefix(tf.constant(batch)).numpy()],
              references["greedy"])

  beam = f"beam {args.beam_width}"
  kept = []
  for label, directory in targets:
    loaded = tf.saved_model.load(directory)
    kept.append(loaded)  # its signatures are called until the timing ends
    # What each signature decodes with (0: greedy).
    widths = {"from_features": int(loaded.serving_beam.numpy())
                               if hasattr(loaded, "serving_beam") else 0,
              "from_examples": int(loaded.eval_beam.numpy())
                               if hasattr(loaded, "eval_beam") else 0}
    for signature, inputs in (("from_features", grids),
                              ("from_examples", examples)):
      width = widths[signature]
      kind = f"beam {width}" if width else "greedy"
      if width not in (0, args.beam_width) or (
          label != "ours" and signature == "from_examples"
          and widths["from_features"] == width):
        continue  # not a decoder measured here, or measured already
      fn = loaded.signatures[signature]
      for size in (1, args.batch):
        captions = measure(f"{label} {kind} ({signature})", size,
                           lambda f=fn, i=inputs, s=size:
                           served_captions(f, i, s),
                           references.get(kind), strict=label == "ours")
        references.setdefault(kind, captions)

  print(f"timing {len(measured)} methods, {args.rounds} interleaved rounds",
        flush=True)
  rows = []  # (method, batch, seconds per caption)
  for (method, batch, _, count), seconds in zip(
      measured, interleaved_rounds([m[2] for m in measured], args.rounds)):
    rows.append((method, batch, statistics.median(seconds) / count))
    print(f"{method:28s} batch {batch:3d}: {1000 * rows[-1][2]:9.2f} ms per "
          "caption (rounds: "
          f"{', '.join(f'{1000 * t / count:.2f}' for t in seconds)})",
          flush=True)

  if args.profile:
    profile(captioner, grids, max_length)

  print(f"\n| method | batch | ms per caption | speed-up vs tutorial |")
  print("|---|---:|---:|---:|")
  baseline = rows[0][2]
  for method, batch, seconds in rows:
    print(f"| {method} | {batch} | {1000 * seconds:.2f} | "
          f"{baseline / seconds:.1f}x |")
  del beam


if __name__ == "__main__":
  main()
