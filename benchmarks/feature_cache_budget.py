"""Benchmark: where the feature cache's CPU goes, per image, and the best
ratio to the bare forward pass that this CPU budget allows.

Runs each step of `captioner cache-features` on its own, in one process, on
the same images, with the job's own functions (ingest/feature_cache.py):

  decode      `check_image`: read the file, check its header, decode (and
              resize a photo not at the network's size: the DecodeImage
              DoFn's work)
  forward     the model handler's traced function on batches already in
              memory (this is benchmarks/feature_cache.py's "bare")
  example     `to_example` + deterministic serialization (ToExample)
  gzip        `deflate_record` of each (ToExample) and `write_shard`
              joining them into one shard
  build       building the network and its first (tracing) call

and prints, for each, wall and CPU milliseconds per image (CPU: the
process's user + system time, every thread). The job must spend at least
that CPU on every image; on C cores it cannot finish sooner than
max(forward wall, total CPU / C) per image, plus the build, which runs
before the first batch. The best job / bare ratio is the forward pass's
wall time over that bound: what any cache of these image files could reach
here, whatever its runner, before Beam's own per-element work is counted
(bare's time leaves out its build; so does the job's when it runs in the
process that prepared the extractor, the in_memory DirectRunner; tracing
stays in the job's).

  PYTHONPATH=. .venv/bin/python benchmarks/feature_cache_budget.py \\
      --extractor mobilenet_v2 \\
      --weights ../shared/weights/mobilenet_v2_1.0_224_no_top.weights.h5 \\
      --photos ../shared/data/flickr8k-224/Flicker8k_Dataset --images 2000
"""

import argparse
import glob
import os
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def timed(step, count):
  """(wall ms, CPU ms) per item of `step()` over `count` items."""
  wall, cpu = time.perf_counter(), time.process_time()
  step()
  return ((time.perf_counter() - wall) * 1e3 / count,
          (time.process_time() - cpu) * 1e3 / count)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=2000)
  parser.add_argument("--photos", required=True, help="a folder of JPEGs")
  parser.add_argument("--extractor", default="mobilenet_v2")
  parser.add_argument("--weights", default="none")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--streams", type=int, default=1,
                      help="threads calling the network at once in the "
                      "forward step, each op with cores / streams "
                      "TensorFlow threads (feature_cache.py's bare-streams; "
                      "2 on 2 cores is how cache-features in_memory runs)")
  args = parser.parse_args()
  if args.streams > 1:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.threading.set_intra_op_parallelism_threads(
        max(1, (os.cpu_count() or 1) // args.streams))

  import numpy as np  # pylint: disable=g-import-not-at-top
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top

  paths = sorted(glob.glob(os.path.join(args.photos, "*.jpg")))
  paths = (paths * (args.images // max(len(paths), 1) + 1))[:args.images]
  if not paths:
    parser.error(f"no .jpg files in {args.photos}")
  count = len(paths)
  records = [{"image_id": i, "file_name": os.path.basename(p), "path": p,
              "captions": ["a caption of about ten words for this photo"] * 5}
             for i, p in enumerate(paths)]
  settings = feature_cache.ExtractorSettings(
      args.extractor, weights_path=args.weights, batch_size=args.batch_size)
  size = settings.spec.image_size
  results = {}
  images = []

  # The dtype the job's batches of these images have (uint8 for photos at
  # the network's size): the build's first call traces the function the
  # forward step then calls.
  _, first, _ = feature_cache.check_image(records[0], settings.max_pixels,
                                          size)

  def build():
    build.model = feature_cache.ExtractorModelHandler(settings).load_model()
    build.model(np.zeros([args.batch_size, size, size, 3], first.dtype))
  results["build"] = timed(build, 1)
  model = build.model

  def decode():
    for record in records:
      _, image, problem = feature_cache.check_image(
          record, settings.max_pixels, size)
      assert problem is None, problem
      images.append(image)
  results["decode"] = timed(decode, count)

  batches = [np.stack(images[i:i + args.batch_size])
             for i in range(0, count, args.batch_size)]
  parts = [[] for _ in range(args.streams)]

  def forward():
    threads = [threading.Thread(target=lambda k: parts[k].extend(
        model(b).numpy() for b in batches[k::args.streams]), args=(k,))
               for k in range(args.streams)]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
  results["forward"] = timed(forward, count)
  # Back in the images' order: stream k had batches k, k + streams, ...
  grids = [grid for i in range(len(batches))
           for grid in parts[i % args.streams][i // args.streams]]

  examples = []
  results["example"] = timed(lambda: examples.extend(
      (r["image_id"], feature_cache.to_example(
          r, g, settings.feature_dtype).SerializeToString(deterministic=True))
      for r, g in zip(records, grids)), count)

  def gzip():
    deflated = [(i, feature_cache.deflate_record(e)) for i, e in examples]
    with tempfile.TemporaryDirectory() as out:
      feature_cache.write_shard(0, deflated, out, 1)
  results["gzip"] = timed(gzip, count)

  cores = os.cpu_count() or 1
  per_image = ("decode", "forward", "example", "gzip")
  total_cpu = sum(results[k][1] for k in per_image)
  forward_wall = results["forward"][0]
  build_wall = results["build"][0]
  print(f"{count} images, extractor {args.extractor}, batch "
        f"{args.batch_size}, {cores} CPUs, {args.streams} stream(s) in the "
        "forward step")
  print(f"{'step':<8} {'wall ms':>9} {'CPU ms':>9}  (per image; build: once)")
  for name in ("build",) + per_image:
    print(f"{name:<8} {results[name][0]:9.2f} {results[name][1]:9.2f}")
  bound = max(forward_wall, total_cpu / cores)
  build_cpu = results["build"][1]
  # The build overlapped with the other steps (all CPU shared by the cores)
  # or before the first batch (the job as RunInference runs it).
  overlapped = max(forward_wall * count, (total_cpu * count + build_cpu)
                   / cores)
  print(f"CPU per image, every step: {total_cpu:.2f} ms; on {cores} cores "
        f"at least {bound:.2f} ms an image against the forward pass's "
        f"{forward_wall:.2f}")
  print(f"best job / bare: {forward_wall / bound:.2f} without the build; "
        f"with it ({build_wall / 1e3:.1f} s) for {count} images: "
        f"{forward_wall * count / overlapped:.2f} if it overlapped the "
        f"rest, {forward_wall * count / (bound * count + build_wall):.2f} "
        "before the first batch")
  return 0


if __name__ == "__main__":
  sys.exit(main())
