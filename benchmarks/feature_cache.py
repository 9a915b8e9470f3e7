"""Benchmark: our Beam feature cache against the older tutorial's loop and
against the bare forward pass of the same network.

All cache the same images with the same extractor and the same weights,
in the same run, each in a fresh process (interpreter and TensorFlow start-up
included, as a user would run them):

  ours      `captioner cache-features` (Beam FnApiRunner, RunInference;
            float16 features in GZIP TFRecord shards): ours-1proc in_memory
            (one process, each stage split among a thread per core, the
            command's default), ours-1thread in_memory with one worker,
            ours-Nproc multi_processing
  tutorial  the "Show, attend and tell" tutorial's caching loop: tf.data map
            of load/resize/preprocess, batch 16, call the model, `np.save`
            one float32 .npy file per image
  bare      the limit of any caching job: the network built as the cache's
            model handler builds it (same weights, same traced function,
            same batch size) called on batches of images already decoded,
            resized and stacked in memory, as the job passes them (uint8
            for photos at the network's size); only the calls are timed,
            and nothing is written. bare: one thread calls it, each op
            with TensorFlow's default threads (every core); bare-streams:
            a thread per core (--workers) calls it at once, each op with
            one TensorFlow thread, as `captioner cache-features` in_memory
            runs its bundles: the faster of the two is the limit

Two times per method: the whole command ("wall": start-up, building the
network, writing) and the work itself ("job": for ours the Beam job as
`captioner cache-features` times it, which includes the workers' start-up
and model build but not the interpreter's start or the weights check; for
the tutorial its loop after the model is built; for bare the timed calls).
Prints images per second, the ratios ours / bare (the issue's goal: >= 0.9)
and ours / tutorial, and bytes on disk per image. With --repeats R the
methods run interleaved (A B C D A B C D ...) and the median is reported.
Usage (BENCHMARKS.md has the figures):

  .venv/bin/python benchmarks/feature_cache.py --images 320 \\
      --photos ../shared/data/coco-train2017-sample/train2017
  .venv/bin/python benchmarks/feature_cache.py --extractor mobilenet_v2 \\
      --weights ../shared/weights/mobilenet_v2_1.0_224_no_top.weights.h5 \\
      --photos ../shared/data/flickr8k-224/Flicker8k_Dataset --images 2000
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def make_dataset(out_dir: str, count: int, photos: str = "") -> str:
  """`count` JPEGs (copies of real photos if given, else generated) and a
  COCO-format captions file; returns the file's path."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images_dir = os.path.join(out_dir, "images")
  os.makedirs(images_dir, exist_ok=True)
  sources = sorted(glob.glob(os.path.join(photos, "*.jpg"))) if photos else []
  rng = np.random.default_rng(0)
  coco = {"images": [], "annotations": []}
  for i in range(1, count + 1):
    name = f"{i:012d}.jpg"
    path = os.path.join(images_dir, name)
    if sources:
      shutil.copy(sources[(i - 1) % len(sources)], path)
    else:
      # Smooth random colour fields at COCO's typical size, 640x480.
      small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
      Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(
          path, quality=90)
    coco["images"].append({"id": i, "file_name": name})
    coco["annotations"].append({"id": i, "image_id": i,
                                "caption": "a photo"})
  annotations = os.path.join(out_dir, "captions.json")
  with open(annotations, "w") as f:
    json.dump(coco, f)
  return annotations


def tutorial(images_dir: str, weights: str, out_dir: str,
             extractor: str) -> None:
  """The older tutorial's loop, as published, with our weights file."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from core import extractors  # pylint: disable=g-import-not-at-top
  spec = extractors.extractor_spec(extractor)
  # The same network and weights as ours (our model adds the [-1, 1]
  # scaling as a layer; the tutorial calls preprocess_input in the map).
  model = extractors.build_extractor(spec, weights)
  backbone = model.get_layer(extractors.BACKBONE)
  # InceptionV3 and MobileNet v1/v2 take [-1, 1] (their preprocess_input,
  # which the tutorial calls); MobileNetV3 rescales [0, 255] itself.
  unit_range = extractors._BACKBONES[extractor].scale_to_unit_range  # pylint: disable=protected-access
  preprocess = ((lambda x: x / 127.5 - 1.0) if unit_range else (lambda x: x))

  def load_image(image_path):
    img = tf.io.read_file(image_path)
    img = tf.io.decode_jpeg(img, channels=3)
    img = tf.image.resize(img, (spec.image_size, spec.image_size))
    img = preprocess(img)
    return img, image_path

  paths = sorted(glob.glob(os.path.join(images_dir, "*.jpg")))
  image_dataset = tf.data.Dataset.from_tensor_slices(paths)
  image_dataset = image_dataset.map(
      load_image, num_parallel_calls=tf.data.AUTOTUNE).batch(16)
  os.makedirs(out_dir, exist_ok=True)
  started = time.time()
  for img, path in image_dataset:
    batch_features = backbone(img)
    batch_features = tf.reshape(
        batch_features, (batch_features.shape[0], -1, batch_features.shape[3]))
    for bf, p in zip(batch_features, path):
      path_of_feature = os.path.join(
          out_dir, os.path.basename(p.numpy().decode("utf-8")))
      np.save(path_of_feature, bf.numpy())
  _write_seconds(out_dir, time.time() - started)


def _write_seconds(out_dir: str, seconds: float) -> None:
  with open(out_dir.rstrip("/") + ".seconds", "w") as f:
    f.write(str(seconds))


def bare(images_dir: str, weights: str, out_dir: str, extractor: str,
         batch_size: str, streams: str) -> None:
  """The forward pass alone: the cache's own model handler's traced
  function on batches already decoded, resized and stacked in memory; in
  `streams` threads calling it at once, each op with cores / streams
  TensorFlow threads, when more than 1 (as `captioner cache-features`
  in_memory sets them for its bundles)."""
  import threading  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  streams = int(streams)
  if streams > 1:
    tf.config.threading.set_intra_op_parallelism_threads(
        max(1, (os.cpu_count() or 1) // streams))
  batch_size = int(batch_size)
  settings = feature_cache.ExtractorSettings(
      extractor, weights_path=weights, batch_size=batch_size)
  started = time.time()
  model = feature_cache.ExtractorModelHandler(settings).load_model()
  build = time.time() - started
  size = settings.spec.image_size
  paths = sorted(glob.glob(os.path.join(images_dir, "*.jpg")))
  # In the job's own form: uint8 for photos at the network's size.
  images = [feature_cache.decode_for_network(open(p, "rb").read(), size)
            for p in paths]
  batches = [np.stack(images[i:i + batch_size])
             for i in range(0, len(images), batch_size)]
  started = time.time()
  model(batches[0]).numpy()  # the trace: timed apart, as the build
  build += time.time() - started
  def call(part):
    for batch in part:
      model(batch).numpy()
  threads = [threading.Thread(target=call, args=(batches[k::streams],))
             for k in range(streams)]
  started = time.time()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  _write_seconds(out_dir, time.time() - started)
  with open(out_dir.rstrip("/") + ".build", "w") as f:
    f.write(str(build))


def _disk_bytes(folder: str, pattern: str) -> int:
  return sum(os.path.getsize(p) for p in glob.glob(os.path.join(folder,
                                                                pattern)))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=320)
  parser.add_argument("--photos", default="",
                      help="folder of JPEGs to copy (default: generated)")
  parser.add_argument("--extractor", default="inception_v3",
                      help="an entry of core/extractors.py's table")
  parser.add_argument("--weights", default="",
                      help="a Keras weights file of the extractor's backbone "
                      "(default: a seeded random network, saved once)")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--repeats", type=int, default=1,
                      help="rounds of every method, interleaved")
  parser.add_argument("--methods", default="ours-1proc,ours-Nproc,tutorial,"
                      "bare,bare-streams",
                      help="which to run, in this order each round")
  parser.add_argument("--before", default="",
                      help="a checkout of older code: adds method "
                      "'before-1proc', its cache-features in_memory")
  parser.add_argument("--work-dir", default="")
  parser.add_argument("--run-tutorial", nargs=4, help=argparse.SUPPRESS)
  parser.add_argument("--run-bare", nargs=6, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.run_tutorial:
    tutorial(*args.run_tutorial)
    return 0
  if args.run_bare:
    bare(*args.run_bare)
    return 0

  work = args.work_dir or tempfile.mkdtemp(prefix="feature-cache-bench-")
  annotations = make_dataset(os.path.join(work, "data"), args.images,
                             args.photos)
  images_dir = os.path.join(work, "data", "images")
  from core import extractors  # pylint: disable=g-import-not-at-top
  spec = extractors.extractor_spec(args.extractor)
  if args.weights:
    weights = os.path.abspath(args.weights)
  else:
    # One weights file for all: the seeded random network, saved once.
    weights = extractors.save_extractor_weights(
        extractors.build_extractor(spec, "none"),
        os.path.join(work, "weights"))
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  python = sys.executable
  captioner = os.path.join(os.path.dirname(python), "captioner")

  modes = {"ours-1proc": ["--direct_running_mode=in_memory"],
           # One process, one bundle at a time (the CLI's default in_memory
           # splits each stage among a thread per core).
           "ours-1thread": ["--direct_running_mode=in_memory",
                            "--direct_num_workers=1"],
           "before-1proc": ["--direct_running_mode=in_memory"],
           "ours-Nproc": ["--direct_running_mode=multi_processing",
                          f"--direct_num_workers={args.workers}"]}
  methods = args.methods.split(",")
  if args.before and "before-1proc" not in methods:
    methods.insert(1, "before-1proc")

  def run_ours(name, out_dir):
    subprocess.run(
        [captioner, "cache-features", "--dataset", "coco-format",
         "--annotations", annotations, "--images", images_dir,
         "--split-names", "all", "--extractor", args.extractor,
         "--weights", weights, "--batch-size", str(args.batch_size),
         "--out", out_dir, *modes[name]],
        check=True, env={**env, "PYTHONPATH": os.path.abspath(args.before)}
        if name.startswith("before") else env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    with open(os.path.join(out_dir, "summary.json")) as f:
      summary = json.load(f)
    processed = summary["splits"]["all"]["processed"]
    assert processed == args.images, f"{name} cached {processed}"
    return (summary["seconds"],
            _disk_bytes(os.path.join(out_dir, "all"), "*.gz"))

  def run_script(flag, out_dir, *extra):
    subprocess.run([python, os.path.abspath(__file__), flag, images_dir,
                    weights, out_dir, args.extractor, *extra],
                   check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(out_dir + ".seconds") as f:
      return float(f.read())

  results = {m: [] for m in methods}   # (wall, job, bytes) per round
  loads = []
  builds = []   # bare: building the network and tracing it, seconds
  for round_ in range(args.repeats):
    for name in methods:
      out_dir = os.path.join(work, f"{name}-{round_}")
      # A --work-dir's earlier run left its output: the cache command would
      # find its own summary there and do nothing.
      shutil.rmtree(out_dir, ignore_errors=True)
      loads.append(os.getloadavg()[0])
      started = time.time()
      if name.startswith(("ours", "before")):
        job, size = run_ours(name, out_dir)
      elif name == "tutorial":
        job = run_script("--run-tutorial", out_dir)
        size = _disk_bytes(out_dir, "*.npy")
        count = len(glob.glob(os.path.join(out_dir, "*.npy")))
        assert count == args.images, f"tutorial wrote {count}"
      else:
        streams = args.workers if name == "bare-streams" else 1
        job = run_script("--run-bare", out_dir, str(args.batch_size),
                         str(streams))
        if name == "bare":
          with open(out_dir + ".build") as f:
            builds.append(float(f.read()))
        size = 0
      results[name].append((time.time() - started, job, size))
      print(f"round {round_ + 1} {name}: wall {results[name][-1][0]:.1f} s, "
            f"job {job:.1f} s (load {loads[-1]:.1f})", flush=True)
      if name != "tutorial" and not args.work_dir:
        shutil.rmtree(out_dir, ignore_errors=True)

  def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return (values[mid] if len(values) % 2
            else (values[mid - 1] + values[mid]) / 2)

  rate = {name: (args.images / median([r[0] for r in rounds]),
                 args.images / median([r[1] for r in rounds]),
                 median([r[2] for r in rounds]) / args.images)
          for name, rounds in results.items()}
  label = {"ours-Nproc": f"ours-{args.workers}proc"}
  print(f"{args.images} images, extractor {args.extractor} "
        f"({'x'.join(map(str, spec.grid))}), weights "
        f"{os.path.basename(weights)}, {os.cpu_count()} CPUs, batch "
        f"{args.batch_size}, {args.repeats} round(s) interleaved (medians); "
        f"load average {min(loads):.1f}-{max(loads):.1f}")
  print(f"{'method':<12} {'wall s':>7} {'images/s':>9} {'job s':>7} "
        f"{'images/s':>9} {'bytes/image':>12}")
  for name, (wall_rate, job_rate, size) in rate.items():
    print(f"{label.get(name, name):<12} {args.images / wall_rate:7.1f} "
          f"{wall_rate:9.2f} "
          f"{args.images / job_rate:7.1f} {job_rate:9.2f} {size:12.0f}")
  if builds:
    build = median(builds)
    calls = args.images / rate["bare"][1]
    print(f"bare: building the network and its first (tracing) call "
          f"{build:.1f} s, not in its job time; with them "
          f"{args.images / (calls + build):.2f} images/s")
  for name in [m for m in rate if m.startswith(("ours", "before"))]:
    wall, job, size = rate[name]
    for other in ("bare", "bare-streams", "tutorial"):
      if other in rate:
        # Three decimals: 0.897 printed as 0.90 read as the goal met.
        print(f"{label.get(name, name)} / {other}: "
              f"job {job / rate[other][1]:.3f}, "
              f"wall {wall / rate[other][0]:.3f}"
              + (f", bytes per image {size / rate[other][2]:.2f}"
                 if other == "tutorial" else ""))
  if not args.work_dir:
    shutil.rmtree(work)
  return 0


if __name__ == "__main__":
  sys.exit(main())
