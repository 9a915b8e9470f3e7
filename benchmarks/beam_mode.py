"""The DirectRunner's two modes on one config: the same pipeline run twice,
each into a fresh pipeline root, once per `beam.args`.

  .venv/bin/python benchmarks/beam_mode.py [--config configs/local.yaml]
      [--epochs 1] [--rounds 1] [--out build/bench-beam-mode]

Mode A: `--direct_running_mode=in_memory` (the bundled default);
mode B: `--direct_running_mode=multi_processing --direct_num_workers=2`.
Rounds alternate A, B, A, B, ... so a change in the machine's load falls on
both. Only `beam.args` differ (and `training.epochs`, the same for both:
`--epochs`, default 1, since the Trainer runs no Beam job). Prints each
Beam component's seconds (from ML Metadata), the whole command's wall time,
and the ratios B / A (medians over the rounds). Results go to
<out>/beam_mode.json.
"""

import argparse
import json
import os
import shutil
import statistics
import sys

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCHMARKS))
sys.path.insert(0, BENCHMARKS)

# pylint: disable=g-import-not-at-top,wrong-import-position
import rerun
from core import config as config_lib

MODES = {"in_memory": ["--direct_running_mode=in_memory"],
         "multi_processing": ["--direct_running_mode=multi_processing",
                              "--direct_num_workers=2"]}
BEAM_COMPONENTS = ("ImageCaptionExampleGen", "StatisticsGen", "Transform",
                   "Evaluator")


def _config(path, base, out, args, epochs):
  rerun.write_config(path, base, out, epochs)
  with open(path, "a") as f:
    f.write(f"beam: {{args: {json.dumps(args)}}}\n")
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=os.path.join(
      os.path.dirname(BENCHMARKS), "configs", "local.yaml"))
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(BENCHMARKS), "build", "bench-beam-mode"))
  args = parser.parse_args(argv)
  out = os.path.abspath(args.out)
  shutil.rmtree(out, ignore_errors=True)
  config = config_lib.load(args.config)
  seconds = {mode: {"wall": [], **{c: [] for c in BEAM_COMPONENTS}}
             for mode in MODES}
  for round_ in range(args.rounds):
    for mode, beam_args in MODES.items():
      run_dir = os.path.join(out, f"{mode}-{round_}")
      os.makedirs(run_dir)
      path = _config(os.path.join(run_dir, "config.yaml"), args.config,
                     run_dir, beam_args, args.epochs)
      print(f"round {round_ + 1}: {mode}", flush=True)
      wall, record = rerun.run(path, os.path.join(run_dir, "run.log"),
                               config.pipeline_name,
                               os.path.join(run_dir, "metadata.db"))
      seconds[mode]["wall"].append(wall)
      for component in BEAM_COMPONENTS:
        seconds[mode][component].append(record.nodes[component].seconds)
      print(f"  {wall:.0f} s: " + ", ".join(
          f"{c} {record.nodes[c].seconds:.0f} s" for c in BEAM_COMPONENTS),
            flush=True)

  medians = {mode: {k: statistics.median(v) for k, v in per.items()}
             for mode, per in seconds.items()}
  a, b = medians["in_memory"], medians["multi_processing"]
  print(f"\n| seconds (median of {args.rounds}) | in_memory (A) | "
        "multi_processing, 2 workers (B) | B / A |")
  print("|---|---|---|---|")
  for key in (*BEAM_COMPONENTS, "wall"):
    name = "whole `captioner run`" if key == "wall" else key
    print(f"| {name} | {a[key]:.0f} | {b[key]:.0f} | "
          f"{b[key] / max(a[key], 1e-9):.2f} |")
  beam_a = sum(a[c] for c in BEAM_COMPONENTS)
  beam_b = sum(b[c] for c in BEAM_COMPONENTS)
  print(f"| the four Beam components | {beam_a:.0f} | {beam_b:.0f} | "
        f"{beam_b / max(beam_a, 1e-9):.2f} |")
  with open(os.path.join(out, "beam_mode.json"), "w") as f:
    json.dump({"config": args.config, "epochs": args.epochs,
               "seconds": seconds, "medians": medians}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
