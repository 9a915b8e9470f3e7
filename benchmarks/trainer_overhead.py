"""Training speed: the input pipeline and the Trainer around Keras `fit`.

  .venv/bin/python benchmarks/trainer_overhead.py --config configs/flickr8k.yaml \\
      --pipeline-root build/flickr8k/pipeline_root \\
      --set training.epochs=3 --set training.steps_per_epoch=80 \\
      --set training.eval_steps=10 [--rounds 2] [--skip-input]

Uses the newest Transform outputs under the pipeline root and the config's
model, features and training sections (`--set KEY=VALUE` overrides, as in
benchmarks/quality.py). Prints two ratios, each against a baseline measured
in the same process, its variants alternating round by round (A B B A) so
that a change in the machine's load reaches both:

  input    steps/s with the real input pipeline over steps/s on the same
           batches in memory (benchmarks/train_input.py's measurement;
           Keras fit, no callbacks). 1.0: the pipeline costs nothing.
  trainer  wall time per trained step of a bare `captioner.fit` over the
           Trainer's. Bare: the same compiled model (build_for_fit), the same
           training dataset (caption_pairs, shuffled, seeded), the same
           epochs and steps, no validation, no callbacks, verbose 0; timed
           from the `fit` call to its return (the first step's tracing
           included). Trainer: TFX's Trainer executor
           (trainer/standalone.py) calling trainer.task.run_fn, timed from
           the executor's call to run_fn's call of the export; everything
           before the export is in (reading the Transform output, the pass
           for the label statistics, building the model, fit with
           validation, progress, early stopping, TensorBoard, sample
           captions, history and checkpoints). With --bare-validating a
           third variant, a bare fit that also validates (the Trainer's eval
           dataset and eval steps), is the baseline of a second ratio: what
           the Trainer adds besides the validation its config asks for.
           The export (extractor,
           SavedModel) is replaced by a stub that creates the serving folder
           TFX checks for; it is neither run nor timed. The same ratio is
           also printed for the Trainer's `fit` call alone.

A breakdown of every Trainer round follows: time per phase before `fit`,
the training steps (the first, with its tracing, apart), validation, and
every callback hook that took time (timers wrap each callback of Keras'
CallbackList; they cost microseconds per call). Results: BENCHMARKS.md,
"Training: input pipeline and Trainer overhead".
"""

import argparse
import collections
import contextlib
import functools
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import types


BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCHMARKS))
sys.path.insert(0, BENCHMARKS)

# pylint: disable=g-import-not-at-top,wrong-import-position
import keras
from keras.src.backend.tensorflow import trainer as keras_tf_trainer
import tensorflow as tf

from core import config as config_lib
from trainer import data
from trainer import distribute
from trainer import standalone
from trainer import task
import quality
import train_input

HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
         "on_train_batch_begin", "on_train_batch_end", "on_test_begin",
         "on_test_end", "on_test_batch_begin", "on_test_batch_end")


class Clock:
  """Seconds and calls per label; `steps` the training steps' own times."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.each = collections.defaultdict(list)
    self.steps = []
    self.test_steps = []
    self.marks = {}  # fit call and return, first step's start, last's end
    self.export_called = None

  def add(self, label, seconds):
    self.seconds[label] += seconds
    self.each[label].append(seconds)

  def timed(self, label, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      began = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        self.add(label, time.perf_counter() - began)
    return wrapper


def _time_steps(callback_list, kind, steps, marks):
  """Appends to `steps` the time from each on_<kind>_batch_begin's return
  to the next on_<kind>_batch_end's call: the step and the wait for its
  batch."""
  begin = getattr(callback_list, f"on_{kind}_batch_begin")
  end = getattr(callback_list, f"on_{kind}_batch_end")
  began = [None]

  def batch_begin(batch, logs=None):
    begin(batch, logs)
    began[0] = time.perf_counter()
    marks.setdefault(f"first {kind} step began", began[0])

  def batch_end(batch, logs=None):
    steps.append(time.perf_counter() - began[0])
    end(batch, logs)
  setattr(callback_list, f"on_{kind}_batch_begin", batch_begin)
  setattr(callback_list, f"on_{kind}_batch_end", batch_end)
  if kind == "train":
    epoch_end = callback_list.on_epoch_end

    def on_epoch_end(epoch, logs=None):
      epoch_end(epoch, logs)
      marks["last epoch ended"] = time.perf_counter()
    callback_list.on_epoch_end = on_epoch_end


@contextlib.contextmanager
def _patched(clock, trainer_phases):
  """Times callbacks, steps, validation and (for the Trainer) the phases of
  run_fn; replaces run_fn's export with a stub."""
  undo = []

  def patch(owner, name, value):
    undo.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)

  original_init = keras.callbacks.CallbackList.__init__

  def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    for callback in self.callbacks:
      for hook in HOOKS:
        setattr(callback, hook, clock.timed(
            f"{type(callback).__name__}.{hook}", getattr(callback, hook)))
    for kind, steps in (("train", clock.steps), ("test", clock.test_steps)):
      _time_steps(self, kind, steps, clock.marks)

  patch(keras.callbacks.CallbackList, "__init__", init)
  trainer_cls = keras_tf_trainer.TensorFlowTrainer
  patch(trainer_cls, "evaluate", clock.timed("validation (evaluate)",
                                             trainer_cls.evaluate))
  fit = clock.timed("fit", trainer_cls.fit)

  def marked_fit(*args, **kwargs):
    clock.marks["fit called"] = time.perf_counter()
    try:
      return fit(*args, **kwargs)
    finally:
      clock.marks["fit returned"] = time.perf_counter()
  patch(trainer_cls, "fit", marked_fit)
  if trainer_phases:
    for owner, name in ((data, "label_statistics"), (data, "count_pairs"),
                        (distribute, "build_for_fit"),
                        (distribute, "choose_strategy"),
                        (distribute, "weights_digest")):
      patch(owner, name, clock.timed(f"run_fn: {name}", getattr(owner, name)))

    def patch_task(module):
      for owner, name in ((module.TrainerInputs, "read"),
                          (module, "compiled_captioner"),
                          (module, "_resume_point"),
                          (module, "_sample_images"), (module, "run_fn")):
        patch(owner, name, clock.timed(f"run_fn: {name}",
                                       getattr(owner, name)))

      def export_stub(captioner, inputs, eval_cfg, serving_cfg, export_dir):
        del captioner, inputs, eval_cfg, serving_cfg
        clock.export_called = time.perf_counter()
        tf.io.gfile.makedirs(export_dir)
      patch(module, "_export", export_stub)

    # TFX's executor reloads the run_fn's module (tfx/utils/import_utils.py)
    # before it calls run_fn: patch trainer.task after the reload.
    original_reload = importlib.reload

    def reload(module):
      module = original_reload(module)
      if module.__name__ == task.__name__:
        patch_task(module)
      return module
    patch(importlib, "reload", reload)
  try:
    yield
  finally:
    for owner, name, value in reversed(undo):
      setattr(owner, name, value)


def _newest(root, *parts):
  return train_input._newest(os.path.join(root, *parts, "*"))  # pylint: disable=protected-access


def trainer_round(config, root, out):
  """run_fn through TFX's executor; (seconds to the export, Clock)."""
  clock = Clock()
  train_cfg = config.training
  with _patched(clock, trainer_phases=True):
    began = time.perf_counter()
    standalone.run_trainer(
        transformed_examples=_newest(root, "Transform",
                                     "transformed_examples"),
        transform_graph=_newest(root, "Transform", "transform_graph"),
        schema=_newest(root, "SchemaGen", "schema"),
        model=os.path.join(out, "Trainer", "model", "1"),
        model_run=os.path.join(out, "Trainer", "model_run", "1"),
        custom_config=config.trainer_custom_config(),
        train_steps=train_cfg.epochs * train_cfg.steps_per_epoch,
        eval_steps=train_cfg.eval_steps)
  if clock.export_called is None:
    raise RuntimeError("run_fn did not reach the export")
  return clock.export_called - began, clock


def bare_round(config, root, validation=False):
  """The same data and compiled model, a bare fit; (fit seconds, Clock).
  With `validation`, the fit validates as the Trainer's does (the same eval
  dataset and eval steps per epoch), still without callbacks."""
  model_cfg, train_cfg, features_cfg = (config.model, config.training,
                                        config.features)
  keras.utils.set_random_seed(train_cfg.seed)
  distribute.set_precision()
  examples_uri, _ = train_input.newest_transform(root)
  fn_args = types.SimpleNamespace(
      transform_output=_newest(root, "Transform", "transform_graph"),
      data_accessor=train_input._data_accessor(examples_uri),  # pylint: disable=protected-access
      train_files=[os.path.join(examples_uri, "Split-train", "*")],
      eval_files=[os.path.join(examples_uri, "Split-eval", "*")])
  inputs = task.TrainerInputs.read(fn_args, model_cfg, train_cfg,
                                   features_cfg)
  counts, train_cfg = task._sized_training(inputs)  # pylint: disable=protected-access
  train_data = inputs.pairs(fn_args.train_files,
                            shuffle_buffer=train_cfg.shuffle_buffer,
                            seed=train_cfg.seed)
  captioner = task.compiled_captioner(model_cfg, train_cfg, inputs.vocab_size,
                                      inputs.spec.grid, counts)
  distribute.build_for_fit(captioner, train_data.element_spec)
  clock = Clock()
  with _patched(clock, trainer_phases=False):
    began = time.perf_counter()
    captioner.fit(train_data, epochs=train_cfg.epochs,
                  steps_per_epoch=train_cfg.steps_per_epoch, verbose=0,
                  **(dict(validation_data=inputs.pairs(fn_args.eval_files),
                          validation_steps=train_cfg.eval_steps)
                     if validation else {}))
    seconds = time.perf_counter() - began
  return seconds, clock


def _seconds(values):
  if len(values) <= 4:
    return ", ".join(f"{v:.2f}" for v in values)
  return (f"first {values[0]:.2f}, median of the rest "
          f"{statistics.median(values[1:]):.3f}")


def _breakdown(clock, total):
  """Lines of where the time to the export went, largest first."""
  steps, tests = clock.steps, clock.test_steps
  rows = [("training steps after the first", sum(steps[1:]), steps[1:]),
          ("first training step (tracing)", steps[0] if steps else 0.0,
           steps[:1])]
  if tests:
    rows.append(("  of validation: eval steps", sum(tests), tests))
  rows += [(label, seconds, clock.each[label])
           for label, seconds in clock.seconds.items()
           if label != "fit" and seconds >= 0.05]
  marks = clock.marks
  if "first train step began" in marks:
    rows.append(("fit: from its call to the first step",
                 marks["first train step began"] - marks["fit called"], None))
    rows.append(("fit: from the last epoch's end to its return",
                 marks["fit returned"] - marks["last epoch ended"], None))
    # What else passed from the first step to the last epoch's end:
    # Keras between steps and epochs.
    between = (marks["last epoch ended"] - marks["first train step began"]
               - sum(steps) - clock.seconds.get("validation (evaluate)", 0.0)
               - sum(seconds for label, seconds in clock.seconds.items()
                     if "." in label and not label.endswith(
                         (".on_train_begin", ".on_train_end"))
                     and ".on_test_" not in label))
    rows.append(("fit: the rest, between steps", between, None))
  rows.sort(key=lambda r: -r[1])
  fit = clock.seconds.get("fit", 0.0)
  if total > fit + 0.05:
    rows.append(("outside fit (run_fn before and after it)", total - fit,
                 None))
  lines = [f"    {'total' + (', to the export' if total > fit else ''):44s} "
           f"{total:7.2f} s"]
  for label, seconds, values in rows:
    line = f"    {label:44s} {seconds:7.2f} s {100 * seconds / total:5.1f}%"
    if values is not None:
      line += f"  ({len(values)}: {_seconds(values)})"
    lines.append(line)
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=config_lib.DEFAULT_CONFIG)
  parser.add_argument("--set", action="append", default=[],
                      metavar="KEY=VALUE", help="override a config key")
  parser.add_argument("--pipeline-root", default=None,
                      help="default: the config's pipeline_root")
  parser.add_argument("--rounds", type=int, default=2,
                      help="Trainer / bare-fit pairs")
  parser.add_argument("--bare-validating", action="store_true",
                      help="also a bare fit that validates as the Trainer "
                      "does (its ratio apart: validation is the config's, "
                      "not the Trainer's overhead)")
  parser.add_argument("--skip-input", action="store_true",
                      help="only the Trainer against the bare fit")
  parser.add_argument("--skip-trainer", action="store_true",
                      help="only the input pipeline against memory")
  parser.add_argument("--input-steps", type=int, default=40)
  parser.add_argument("--input-rounds", type=int, default=3)
  parser.add_argument("--cached-batches", type=int, default=40)
  parser.add_argument("--out", default=None,
                      help="scratch folder for the Trainer's outputs "
                      "(default: a temporary folder, removed)")
  args = parser.parse_args(argv)

  config = config_lib.load(args.config, quality.overrides(args.set))
  root = args.pipeline_root or config.resolve(config.pipeline_root)
  train_cfg = config.training
  if not train_cfg.steps_per_epoch or not train_cfg.eval_steps:
    raise SystemExit("set training.steps_per_epoch and training.eval_steps "
                     "(> 0): both sides must train the same number of steps")
  steps = train_cfg.epochs * train_cfg.steps_per_epoch
  print(f"config {args.config} {' '.join(args.set)}; pipeline root {root}; "
        f"{train_cfg.epochs} epochs x {train_cfg.steps_per_epoch} steps, "
        f"{train_cfg.eval_steps} eval steps, {train_cfg.sample_captions} "
        f"sample images; cpu threads {os.cpu_count()}; load "
        f"{os.getloadavg()[0]:.2f}", flush=True)
  results = []
  if not args.skip_input:
    speeds = train_input.input_pipeline_ratio(
        config, root, args.input_steps, args.input_rounds,
        args.cached_batches)
    real, memory = (statistics.median(speeds["real"]),
                    statistics.median(speeds["memory"]))
    results.append(f"input: median steps/s real input pipeline {real:.2f}, "
                   f"in memory {memory:.2f}; ratio {real / memory:.3f}")
    print(results[-1], flush=True)

  if not args.skip_trainer:
    scratch = args.out or tempfile.mkdtemp(prefix="trainer-overhead-")
    runs = {"trainer": [], "trainer fit": [], "bare": [],
            "bare validating": []}

    def run_trainer(round_):
      out = os.path.join(scratch, f"round-{round_ + 1}")
      shutil.rmtree(out, ignore_errors=True)
      total, clock = trainer_round(config, root, out)
      runs["trainer"].append(total / steps)
      runs["trainer fit"].append(clock.seconds["fit"] / steps)
      print(f"round {round_ + 1}: trainer {total:.1f} s to the export, "
            f"its fit {clock.seconds['fit']:.1f} s; {steps} steps; load "
            f"{os.getloadavg()[0]:.2f}\n{_breakdown(clock, total)}",
            flush=True)
      shutil.rmtree(out, ignore_errors=True)

    def run_bare(round_, validation=False):
      seconds, clock = bare_round(config, root, validation)
      name = "bare validating" if validation else "bare"
      runs[name].append(seconds / steps)
      print(f"round {round_ + 1}: {name} fit {seconds:.1f} s; load "
            f"{os.getloadavg()[0]:.2f}\n{_breakdown(clock, seconds)}",
            flush=True)

    variants = [run_trainer, run_bare]
    if args.bare_validating:
      variants.append(lambda round_: run_bare(round_, validation=True))
    for round_ in range(args.rounds):
      # A B C, C B A, ...: a machine speeding up or slowing down over the
      # run favours no variant (its steps drifted ~10% between the rounds
      # of one run on 2026-12-03).
      for variant in variants if round_ % 2 == 0 else variants[::-1]:
        variant(round_)
    if not args.out:
      shutil.rmtree(scratch, ignore_errors=True)
    baselines = [("bare", "bare fit")]
    if args.bare_validating:
      baselines.append(("bare validating", "bare fit validating as the "
                        "Trainer does"))
    for baseline, baseline_label in baselines:
      bare = statistics.median(runs[baseline])
      for name in ("trainer", "trainer fit"):
        mine = statistics.median(runs[name])
        label = ("whole Trainer (run_fn to the export)" if name == "trainer"
                 else "the Trainer's fit call alone")
        results.append(
            f"trainer: median s per trained step, {baseline_label} "
            f"{bare:.3f}, {label} {mine:.3f}; ratio {bare / mine:.3f}  "
            "(rounds: " + ", ".join(
                f"{b / m:.3f}" for b, m in zip(runs[baseline], runs[name]))
            + ")")
  print("\n".join(results))


if __name__ == "__main__":
  main()
