"""Benchmark: our Beam feature cache against the older tutorial's loop.

Both cache the same images with the same extractor and the same weights,
in the same run, each in a fresh process (interpreter and TensorFlow start-up
included, as a user would run them), and write their features to disk:

  ours      `captioner cache-features` (Beam DirectRunner, multi-processing,
            RunInference; float16 features in GZIP TFRecord shards)
  tutorial  the "Show, attend and tell" tutorial's caching loop: tf.data map
            of load/resize/preprocess, batch 16, call the model, `np.save`
            one float32 .npy file per image

Prints images per second for each, the ratio (ours / tutorial), and bytes on
disk per image. Usage (BENCHMARKS.md has the figures):

  .venv/bin/python benchmarks/feature_cache.py --images 320 \\
      --photos ../shared/data/coco-train2017-sample/train2017
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
  preprocess = (tf.keras.applications.inception_v3.preprocess_input
                if extractor == "inception_v3" else (lambda x: x))

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
  for img, path in image_dataset:
    batch_features = backbone(img)
    batch_features = tf.reshape(
        batch_features, (batch_features.shape[0], -1, batch_features.shape[3]))
    for bf, p in zip(batch_features, path):
      path_of_feature = os.path.join(
          out_dir, os.path.basename(p.numpy().decode("utf-8")))
      np.save(path_of_feature, bf.numpy())


def _disk_bytes(folder: str, pattern: str) -> int:
  return sum(os.path.getsize(p) for p in glob.glob(os.path.join(folder,
                                                                pattern)))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=320)
  parser.add_argument("--photos", default="",
                      help="folder of JPEGs to copy (default: generated)")
  parser.add_argument("--extractor", default="inception_v3")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--work-dir", default="")
  parser.add_argument("--run-tutorial", nargs=4, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.run_tutorial:
    tutorial(*args.run_tutorial)
    return 0

  work = args.work_dir or tempfile.mkdtemp(prefix="feature-cache-bench-")
  annotations = make_dataset(os.path.join(work, "data"), args.images,
                             args.photos)
  images_dir = os.path.join(work, "data", "images")
  # One weights file for both: the seeded random network, saved once.
  from core import extractors  # pylint: disable=g-import-not-at-top
  spec = extractors.extractor_spec(args.extractor)
  weights = extractors.save_extractor_weights(
      extractors.build_extractor(spec, "none"), os.path.join(work, "weights"))
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  python = sys.executable
  captioner = os.path.join(os.path.dirname(python), "captioner")

  results = {}
  modes = {"ours-1proc": ["--direct_running_mode=in_memory"],
           f"ours-{args.workers}proc": [
               "--direct_running_mode=multi_processing",
               f"--direct_num_workers={args.workers}"]}
  for name, beam_args in modes.items():
    ours_dir = os.path.join(work, name)
    started = time.time()
    subprocess.run(
        [captioner, "cache-features", "--dataset", "coco-format",
         "--annotations", annotations, "--images", images_dir,
         "--split-names", "all", "--extractor", args.extractor,
         "--weights", weights, "--batch-size", str(args.batch_size),
         "--out", ours_dir, *beam_args],
        check=True, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    results[name] = (time.time() - started,
                     _disk_bytes(os.path.join(ours_dir, "all"), "*.gz"))

  tutorial_dir = os.path.join(work, "tutorial")
  started = time.time()
  subprocess.run([python, os.path.abspath(__file__), "--run-tutorial",
                  images_dir, weights, tutorial_dir, args.extractor],
                 check=True, env=env, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  results["tutorial"] = (time.time() - started,
                         _disk_bytes(tutorial_dir, "*.npy"))
  count = len(glob.glob(os.path.join(tutorial_dir, "*.npy")))
  assert count == args.images, f"tutorial wrote {count} of {args.images}"

  print(f"{args.images} images, extractor {args.extractor} "
        f"({'x'.join(map(str, spec.grid))}), {os.cpu_count()} CPUs, "
        f"batch {args.batch_size}; wall time of the whole command, start-up "
        "included")
  print(f"{'method':<14} {'seconds':>8} {'images/s':>9} {'bytes/image':>12}")
  for name, (seconds, size) in results.items():
    print(f"{name:<14} {seconds:8.1f} {args.images / seconds:9.2f} "
          f"{size / args.images:12.0f}")
  tutorial_seconds, tutorial_bytes = results.pop("tutorial")
  for name, (seconds, size) in results.items():
    print(f"{name}: throughput ratio (ours / tutorial) "
          f"{tutorial_seconds / seconds:.2f}, bytes per image ratio "
          f"{size / tutorial_bytes:.2f}")
  if not args.work_dir:
    shutil.rmtree(work)
  return 0


if __name__ == "__main__":
  sys.exit(main())
