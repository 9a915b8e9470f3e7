"""Seconds to export the serving SavedModel of the tests' tiny model, this
checkout's code against other checkouts', in the same run.

  .venv/bin/python benchmarks/export_time.py [--rounds 3]
      [--compare NAME=CHECKOUT ...] [--config CONFIG --model PUSHED_MODEL]

Every Trainer run ends with `trainer/export.py`'s export (its signatures
traced and saved), and the tests export small models often (a pipeline
run's Trainer, tests/helpers/tiny_model.py). Each round exports the tiny
model once per code (this checkout first, then each CHECKOUT, e.g. a `git
worktree` of an earlier commit), each in a fresh process whose packages come
from that code, into a fresh folder; prints every code's median seconds
(the export alone, not the import) and its ratio to this checkout's.
With --config and --model it exports that pushed model's weights instead
(restored as benchmarks/decode.py restores them, e.g. the Flickr8k model
with its MobileNetV2 extractor), with the config's settings.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_EXPORT = """
import sys, time
sys.path.insert(0, {root!r})
from tests.helpers import tiny_model
started = time.perf_counter()
tiny_model.export({out!r})
print("export seconds", time.perf_counter() - started)
"""

_EXPORT_PUSHED = """
import os, sys, time
sys.path.insert(0, {root!r})
from core import config as config_lib
from trainer import export
config = config_lib.load({config!r})
captioner, extractor, spec, _, _ = export.restore_captioner(
    {model!r}, config.model, config.features)
started = time.perf_counter()
export.export({out!r}, captioner, extractor, spec.image_size,
              os.path.join({model!r}, "assets", "caption_vocab"),
              config.model.max_length, max_pixels=config.features.max_pixels,
              feature_dtype=config.features.dtype,
              eval_beam_width=config.evaluation.beam_width,
              serving_beam_width=config.serving.beam_width)
print("export seconds", time.perf_counter() - started)
"""


def export_seconds(code_root: str, out: str, config: str = "",
                   model: str = "") -> float:
  env = {**os.environ, "PYTHONPATH": code_root, "TF_CPP_MIN_LOG_LEVEL": "3"}
  script = (_EXPORT_PUSHED.format(root=code_root, out=out, config=config,
                                  model=model) if model
            else _EXPORT.format(root=code_root, out=out))
  result = subprocess.run(
      [sys.executable, "-c", script],
      cwd=code_root, env=env, capture_output=True, text=True, timeout=900,
      check=False)
  lines = [l for l in result.stdout.splitlines()
           if l.startswith("export seconds")]
  if result.returncode != 0 or not lines:
    raise SystemExit(f"export with {code_root} failed:\n"
                     f"{result.stderr[-3000:]}")
  return float(lines[-1].split()[-1])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--compare", action="append", default=[],
                      metavar="NAME=CHECKOUT")
  parser.add_argument("--config", default="",
                      help="the config of --model (default: the tiny model)")
  parser.add_argument("--model", default="", help="a pushed model's folder")
  args = parser.parse_args(argv)
  if bool(args.config) != bool(args.model):
    parser.error("--config and --model go together")
  config, model = (os.path.abspath(args.config) if args.config else "",
                   os.path.abspath(args.model) if args.model else "")
  codes = {"this checkout": ROOT}
  for item in args.compare:
    name, _, path = item.partition("=")
    codes[name] = os.path.abspath(path)
  seconds = {name: [] for name in codes}
  with tempfile.TemporaryDirectory() as tmp:
    for round_ in range(args.rounds):
      for name, code_root in codes.items():
        out = os.path.join(tmp, f"{round_}-{len(seconds[name])}-{id(name)}")
        seconds[name].append(export_seconds(code_root, out, config, model))
        print(f"round {round_ + 1}: {name}: {seconds[name][-1]:.1f} s",
              flush=True)
  base = statistics.median(seconds["this checkout"])
  for name, values in seconds.items():
    median = statistics.median(values)
    print(f"{name}: median {median:.1f} s over {len(values)} rounds, "
          f"{median / base:.2f}x this checkout's")
  return 0


if __name__ == "__main__":
  sys.exit(main())
