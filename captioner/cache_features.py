"""`captioner cache-features`: the feature-caching job outside TFX.

The same Beam transform as ImageCaptionExampleGen (ingest/feature_cache.py)
for one-off caching of a whole dataset, locally or on Dataflow:

  <out>/<split>/data_tfrecord-*.gz     features + captions, one folder a split
  <out>/dead_letters/<split>-*.jsonl   skipped images and dropped captions
  <out>/extractor/                     the extractor's weights and settings
  <out>/summary.json                   written last: counts and the request

A rerun with the same request over a completed output says so and does
nothing; a different request over it is refused. Its options are defined
with the other commands' in captioner/cli.py.
"""

import contextlib
import json
import os
import sys
import time
from typing import Tuple

from ingest import local_beam


def _request(args) -> dict:
  """What determines the output; a rerun must ask for the same."""
  return {k: getattr(args, k) for k in (
      "dataset", "annotations", "images", "split_names", "extractor",
      "weights", "batch_size", "dtype", "max_pixels", "patch_image_size",
      "patch_size", "alpha")}


def beam_args(args, extra) -> list:
  """Beam options: the runner, the caller's extras and sensible defaults."""
  options = [f"--runner={args.runner}"] + list(extra)
  given = " ".join(extra)
  if local_beam.is_local(args.runner):
    if "--direct_running_mode" not in given:
      options.append("--direct_running_mode=multi_processing")
    # A worker per core, in either mode. Beam warns that in_memory ignores
    # it, but the FnApiRunner then splits each stage's input among that
    # many threads of the one process (ParallelBundleManager), whose
    # network calls overlap: on 2 cores, 1.10x the images per second of
    # one worker (5,000 Flickr8k photos, MobileNetV2; BENCHMARKS.md).
    if "--direct_num_workers" not in given:
      options.append(f"--direct_num_workers={os.cpu_count() or 1}")
  elif "--setup_file" not in given and "--sdk_container_image" not in given:
    # Dataflow workers install this project from its setup.py.
    from core import config  # pylint: disable=g-import-not-at-top
    options.append(f"--setup_file={os.path.join(config.REPO_ROOT, 'setup.py')}")
  return options


def tensorflow_threads(runner: str, options: list) -> Tuple[int, int]:
  """(calls, threads): how many network calls a local job makes at once
  (in_memory: W workers are W bundles in threads of this process;
  multi_processing: W worker processes) and how many threads TensorFlow
  should give each op; (0, 0) to leave TensorFlow's default.

  W calls of one thread each beat W calls sharing every core's threads:
  on 2 vCPUs the network alone on batches in memory ran 1.05-1.20x faster
  on less CPU; in_memory, the job 1.06-1.08x in two of three pairs and
  0.995x in the third (5,000 Flickr8k photos, MobileNetV2);
  multi_processing, 1.05 and 1.07x in two pairs (2,000; BENCHMARKS.md).
  """
  if not local_beam.is_local(runner):
    return 0, 0
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  direct = pipeline_options.PipelineOptions(options).view_as(
      pipeline_options.DirectOptions)
  cores = os.cpu_count() or 1
  calls = direct.direct_num_workers or cores   # 0: a worker per core
  if calls <= 1:
    return 0, 0
  return calls, max(1, cores // calls)


def show_worker_progress() -> None:
  """Prints one progress line for the whole job at most every 10 s, the
  Beam workers' errors, and warnings but the known-harmless ones; nothing
  else of what the workers log (see captioner/console.py)."""
  from captioner import console  # pylint: disable=g-import-not-at-top
  console.relay_feature_cache_progress("[cache-features]")
  console.quiet_root_logger()


def run(args, extra=()) -> int:
  # Heavy imports here, so `captioner --help` stays fast.
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  from ingest import readers  # pylint: disable=g-import-not-at-top

  option_list = beam_args(args, extra)
  calls, threads = tensorflow_threads(args.runner, option_list)
  # Yours to choose if you set it; else set before TensorFlow starts (it
  # refuses afterwards: the command called from Python keeps its threads),
  # and for the job's worker processes, which inherit the variable.
  if threads and "TF_NUM_INTRAOP_THREADS" not in os.environ:
    try:
      tf.config.threading.set_intra_op_parallelism_threads(threads)
      where = ("bundles at once in this process" if "in_memory" in
               " ".join(option_list) else "worker processes")
      print(f"[cache-features] {calls} {where}, {threads} TensorFlow "
            "thread(s) for each op", flush=True)
    except RuntimeError:
      threads = 0
  else:
    threads = 0
  out = args.out
  summary_path = os.path.join(out, feature_cache.SUMMARY_FILE)
  request = _request(args)
  if tf.io.gfile.exists(summary_path):
    with tf.io.gfile.GFile(summary_path) as f:
      done = json.load(f)
    if done.get("request") == request:
      print(f"[cache-features] {out} already holds this cache (completed "
            f"{done.get('completed', '?')}); nothing to do.")
      for line in feature_cache.summary_lines(done["splits"]):
        print(f"[cache-features] {line}")
      return 0
    print(f"captioner cache-features: error: {out} holds a cache made with "
          f"other settings ({summary_path}); choose another --out or delete "
          "it", file=sys.stderr)
    return 2

  dataset = "coco" if args.dataset == "coco-format" else args.dataset
  sources = readers.dataset_splits(
      dataset, args.annotations, args.images,
      args.split_names.split(",") if args.split_names else None)
  feature_cache.check_inputs(sources, "--annotations/--images")
  print(f"[cache-features] {args.dataset}: splits {', '.join(sources)}; "
        f"extractor {args.extractor} (weights {args.weights}); building it "
        "once to check the weights (an in_memory job uses it)", flush=True)
  from core import extractors  # pylint: disable=g-import-not-at-top
  with contextlib.ExitStack() as prepared:
    try:
      settings = prepared.enter_context(feature_cache.prepared_extractor({
          "extractor": args.extractor, "weights": args.weights,
          "batch_size": args.batch_size,
          "patch_image_size": args.patch_image_size,
          "patch_size": args.patch_size, "max_pixels": args.max_pixels,
          "feature_dtype": args.dtype, "alpha": args.alpha}, out))
    except (extractors.WeightsUnavailableError,
            extractors.WeightsMismatchError) as e:
      # The weights setting, wrong before any image is read.
      print(f"captioner cache-features: error: {e}", file=sys.stderr)
      return 2
    options = beam.options.pipeline_options.PipelineOptions(option_list)
    started = time.time()
    print(f"[cache-features] running the Beam job ({args.runner}); progress "
          "at most every 10 s", flush=True)
    show_worker_progress()
    if threads:
      os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
      prepared.callback(os.environ.pop, "TF_NUM_INTRAOP_THREADS", None)
    with beam.Pipeline(options=options) as pipeline:
      feature_cache.cache_splits(
          pipeline, sources, settings,
          {name: os.path.join(out, name) for name in sources}, out,
          report=lambda line: print(f"[cache-features] {line}", flush=True))
  seconds = time.time() - started
  summary = feature_cache.collect_summary(out)
  processed = sum(s["processed"] for s in summary.values())
  for line in feature_cache.summary_lines(summary):
    print(f"[cache-features] {line}")
  print(f"[cache-features] {processed} images in {seconds:.0f} s "
        f"({processed / max(seconds, 1e-9):.1f} images/s); features in "
        f"{out}/<split>/, dead letters in {out}/dead_letters/")
  try:
    feature_cache.check_nonempty(summary, sources)
    feature_cache.check_complete(summary)
  except (feature_cache.MissingDataError,
          feature_cache.IncompleteCacheError) as e:
    # No summary.json: the output is not a usable cache, and a rerun
    # with a corrected folder must not be refused as "already done".
    print(f"captioner cache-features: error: {e}", file=sys.stderr)
    return 2
  feature_cache.write_json(summary_path, {
      "request": request, "splits": summary, "seconds": round(seconds, 1),
      "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
  return 0
