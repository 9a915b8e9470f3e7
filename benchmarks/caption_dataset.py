"""`captioner caption-dataset` against `captioner caption`, end to end.

  PYTHONPATH=. .venv/bin/python benchmarks/caption_dataset.py \
      [--model /work/runs/q/ship/model/Format-Serving] \
      [--images /work/shared/data/flickr8k-224/Flicker8k_Dataset] \
      [--num-images 1000] [--per-image 20] [-- BEAM OPTIONS...]

The first --num-images files of --images (sorted by name) are captioned
three ways, in this run, each timed from the command's start to its exit
(start-up, model loading and everything else included, as a user waits):

  caption-dataset   `captioner caption-dataset --images <folder>` (a folder
                    of links to those files): the Beam job, DirectRunner
                    on every core unless the extra Beam options say otherwise
  caption, 1 call   `captioner caption --model M FILE...` with every file
  caption, per file `captioner caption --model M FILE` once per file, on the
                    first --per-image files only (each call loads the model:
                    at 1,000 images this would take hours); its images/s
                    stands for the whole set

and prints images/s of each and the ratios. The captions of caption-dataset
and of the one `captioner caption` call must be the same (the same
serving_default signature), or it stops. Figures: BENCHMARKS.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CAPTIONER = os.path.join(os.path.dirname(sys.executable), "captioner")


def _timed(command):
  started = time.perf_counter()
  run = subprocess.run(command, capture_output=True, text=True)
  seconds = time.perf_counter() - started
  if run.returncode:
    sys.exit(f"{' '.join(command[:3])} ... failed ({run.returncode}):\n"
             + run.stdout[-2000:] + run.stderr[-3000:])
  return seconds, run.stdout


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model",
                      default="/work/runs/q/ship/model/Format-Serving")
  parser.add_argument("--images", default="/work/shared/data/flickr8k-224/"
                      "Flicker8k_Dataset")
  parser.add_argument("--num-images", type=int, default=1000)
  parser.add_argument("--per-image", type=int, default=20,
                      help="files captioned one call each (default 20)")
  args, beam_options = parser.parse_known_args(argv)
  beam_options = [o for o in beam_options if o != "--"]
  names = sorted(n for n in os.listdir(args.images)
                 if n.lower().endswith((".jpg", ".jpeg", ".png")))
  names = names[:args.num_images]
  if len(names) < args.num_images:
    sys.exit(f"{args.images} holds only {len(names)} images")
  paths = [os.path.join(args.images, n) for n in names]
  work = tempfile.mkdtemp(prefix="caption-dataset-bench-")
  folder = os.path.join(work, "images")
  os.makedirs(folder)
  for name, path in zip(names, paths):
    os.symlink(path, os.path.join(folder, name))
  print(f"{len(paths)} images of {args.images}; model {args.model}; "
        f"{os.cpu_count()} CPUs; Beam options {beam_options or 'default'}",
        flush=True)

  out = os.path.join(work, "out")
  dataset_s, _ = _timed([CAPTIONER, "caption-dataset", "--model", args.model,
                         "--images", folder, "--out", out, *beam_options])
  with open(os.path.join(out, "captions.jsonl")) as f:
    from_dataset = {json.loads(l)["file_name"]: json.loads(l)["caption"]
                    for l in f}
  if len(from_dataset) != len(paths):
    sys.exit(f"caption-dataset captioned {len(from_dataset)} of {len(paths)}"
             f" images; see {out}/dead_letters")
  print(f"caption-dataset    {dataset_s:7.1f} s  "
        f"{len(paths) / dataset_s:6.2f} images/s", flush=True)

  one_s, stdout = _timed([CAPTIONER, "caption", "--model", args.model,
                          *paths])
  from_caption = {}
  for line in stdout.splitlines():
    path, _, caption = line.partition(": ")
    from_caption[os.path.basename(path)] = caption
  differ = [n for n in names if from_caption.get(n) != from_dataset[n]]
  if differ:
    sys.exit(f"{len(differ)} captions differ between caption-dataset and "
             f"captioner caption, e.g. {differ[0]}: "
             f"{from_dataset[differ[0]]!r} vs {from_caption.get(differ[0])!r}")
  print(f"caption, 1 call    {one_s:7.1f} s  "
        f"{len(paths) / one_s:6.2f} images/s", flush=True)

  few = paths[:args.per_image]
  per_s = sum(_timed([CAPTIONER, "caption", "--model", args.model, p])[0]
              for p in few)
  print(f"caption, per file  {per_s:7.1f} s  {len(few) / per_s:6.2f} "
        f"images/s (over {len(few)} files)", flush=True)

  dataset_rate = len(paths) / dataset_s
  print(f"caption-dataset / caption 1 call:   "
        f"{dataset_rate / (len(paths) / one_s):.2f}x")
  print(f"caption-dataset / caption per file: "
        f"{dataset_rate / (len(few) / per_s):.2f}x")
  print(f"captions identical for all {len(paths)} images; outputs in {work}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
