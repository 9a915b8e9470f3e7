"""What TFX's cache saves: a pipeline run, then the same with one training key
changed.

  .venv/bin/python benchmarks/rerun.py [--config configs/local.yaml]
      [--epochs N] [--out build/bench-rerun]

Runs `captioner run` on the config (the bundled sample by default) into a
fresh pipeline root under --out, then again with only `training.epochs`
changed (to --epochs; default one more than the config's). Prints both wall
times (the whole command), their ratio, and from ML Metadata which
components ran (with their time) and which were reused from the cache.
Results go to <out>/rerun.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from core import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from pipeline import run_record  # pylint: disable=g-import-not-at-top,wrong-import-position

CAPTIONER = os.path.join(os.path.dirname(sys.executable), "captioner")


def write_config(path, base, out, epochs=None):
  lines = [f"base: {os.path.abspath(base)}",
           f"pipeline_root: {out}/pipeline_root",
           f"metadata_path: {out}/metadata.db",
           f"serving_dir: {out}/serving"]
  if epochs is not None:
    lines.append(f"training: {{epochs: {epochs}}}")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def run(config_path, log_path, pipeline_name, metadata):
  started = time.monotonic()
  with open(log_path, "w") as log:
    # This checkout's code, whatever the installed package points at.
    result = subprocess.run([CAPTIONER, "run", "--config", config_path],
                            cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": _ROOT})
  seconds = time.monotonic() - started
  if result.returncode != 0:
    raise SystemExit(f"captioner run failed (exit {result.returncode}); see "
                     f"{log_path}")
  record = run_record.latest_run(metadata, pipeline_name)
  return seconds, record


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=os.path.join(_ROOT, "configs",
                                                       "local.yaml"))
  parser.add_argument("--epochs", type=int, default=None,
                      help="training.epochs of the second run (default: the "
                      "config's + 1)")
  parser.add_argument("--out", default=os.path.join(_ROOT, "build",
                                                    "bench-rerun"))
  args = parser.parse_args(argv)
  out = os.path.abspath(args.out)
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  config = config_lib.load(args.config)
  epochs = args.epochs or config.training.epochs + 1
  metadata = os.path.join(out, "metadata.db")
  first = write_config(os.path.join(out, "first.yaml"), args.config, out)
  second = write_config(os.path.join(out, "second.yaml"), args.config, out,
                         epochs)
  print(f"first run: {args.config} (training.epochs {config.training.epochs})",
        flush=True)
  first_seconds, first_record = run(first, os.path.join(out, "first.log"),
                                     config.pipeline_name, metadata)
  print(f"  {first_seconds:.0f} s", flush=True)
  print(f"second run: training.epochs {epochs}, nothing else changed",
        flush=True)
  second_seconds, second_record = run(second, os.path.join(out, "second.log"),
                                       config.pipeline_name, metadata)
  print(f"  {second_seconds:.0f} s", flush=True)

  print("\n| component | first run | second run |")
  print("|---|---|---|")
  for node_id, node in first_record.nodes.items():
    again = second_record.nodes.get(node_id)
    print(f"| {node_id} | ran, {node.seconds:.0f} s | "
          + (f"ran, {again.seconds:.0f} s" if again and again.state == "ran"
             else "reused from cache" if again and again.state == "cached"
             else (again.state if again else "-")) + " |")
  ratio = second_seconds / first_seconds
  print(f"\nwall time: first {first_seconds:.0f} s, second {second_seconds:.0f}"
        f" s; ratio {ratio:.2f}")
  print(f"reused from cache: {', '.join(second_record.cached())}")
  print(f"ran again: {', '.join(second_record.ran())}")
  with open(os.path.join(out, "rerun.json"), "w") as f:
    json.dump({"first_seconds": first_seconds,
               "second_seconds": second_seconds, "ratio": ratio,
               "epochs": [config.training.epochs, epochs],
               "first": {n: r.seconds for n, r in first_record.nodes.items()},
               "second": {n: (r.state, r.seconds)
                          for n, r in second_record.nodes.items()}},
              f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
