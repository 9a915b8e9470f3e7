"""`captioner`: the one command line for everything a person does by hand."""

import argparse
import dataclasses
import glob
import json
import os
import sys
import time
from typing import Optional


def _sample(args) -> int:
  from ingest import sample  # pylint: disable=g-import-not-at-top
  summary = sample.generate(args.out, num_images=args.images, seed=args.seed)
  print(f"wrote {summary['train']} training and {summary['eval']} eval images "
        f"with 5 captions each to {args.out} (COCO 2017 captions layout)")
  return 0


def latest_version_dir(serving_dir: str):
  """The newest pushed model version folder, or None."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.isdir(serving_dir):
    return None
  versions = [v.rstrip("/") for v in tf.io.gfile.listdir(serving_dir)
              if v.rstrip("/").isdigit()]
  if not versions:
    return None
  return os.path.join(serving_dir, max(versions, key=int))


def latest_bleu(pipeline_root: str, evaluation: Optional[str] = None):
  """BLEU-1..4 of the newest Evaluator run under the pipeline root, or of
  the `evaluation` artifact folder given."""
  from components import caption_evaluator  # pylint: disable=g-import-not-at-top
  candidate = caption_evaluator.latest_candidate_metrics(pipeline_root,
                                                         evaluation)
  return {k: v for k, v in candidate.items() if k.startswith("bleu_")}


def model_version_dir(model_dir: str) -> str:
  """A SavedModel folder, or the newest version under a serving folder."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
    return model_dir
  newest = latest_version_dir(model_dir)
  if newest is None or not tf.io.gfile.exists(
      os.path.join(newest, "saved_model.pb")):
    raise SystemExit(f"--model {model_dir}: no saved_model.pb there nor in a "
                     "numbered version folder under it (pass a pushed model, "
                     "e.g. build/serving or build/serving/<version>)")
  return newest


def caption_files(model_dir: str, paths, beam: int = 0,
                  length_penalty: float = 0.0, temperature: float = 0.0,
                  seed: int = 0):
  """Captions of image files: greedy (serving_default), beam search of width
  `beam`, or sampled at `temperature` (signature sample, seeded)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if beam and temperature:
    raise SystemExit("choose --beam or --temperature, not both")
  if beam < 0 or temperature < 0:
    raise SystemExit("--beam and --temperature must not be negative")
  model_dir = model_version_dir(model_dir)
  model = tf.saved_model.load(model_dir)
  images = tf.constant([tf.io.gfile.GFile(p, "rb").read() for p in paths])
  if beam:
    if "beam_search" not in model.signatures:
      raise SystemExit(f"{model_dir} has no beam_search signature (only "
                       "models with an incremental decoder export one)")
    out = model.signatures["beam_search"](
        image_bytes=images, beam_width=tf.constant(beam, tf.int32),
        length_penalty=tf.constant(length_penalty, tf.float32))
  elif temperature:
    if "sample" not in model.signatures:
      raise SystemExit(f"{model_dir} has no sample signature (exported "
                       "before sampling was served): retrain or re-export")
    out = model.signatures["sample"](
        image_bytes=images, temperature=tf.constant(temperature, tf.float32),
        seed=tf.constant(seed, tf.int32))
  else:
    out = model.signatures["serving_default"](image_bytes=images)
  return [c.decode("utf-8") for c in out["caption"].numpy()]


def attention_png(model_dir: str, image_path: str, out_path: str) -> str:
  """Each generated word over the image with its attention map, as a PNG
  (the tutorial's figure); returns the greedy caption."""
  import io  # pylint: disable=g-import-not-at-top
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model_dir = model_version_dir(model_dir)
  model = tf.saved_model.load(model_dir)
  if "attention" not in model.signatures:
    raise SystemExit(f"{model_dir} has no attention signature (only models "
                     "with an incremental decoder export one)")
  data = tf.io.gfile.GFile(image_path, "rb").read()
  out = model.signatures["attention"](image_bytes=tf.constant([data]))
  caption = out["caption"].numpy()[0].decode("utf-8")
  words = caption.split()
  maps = out["attention"].numpy()[0]                   # (T, h, w)
  picture = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  columns = min(len(words), 4) or 1
  rows = max(1, -(-len(words) // columns))
  figure = plt.figure(figsize=(3 * columns, 3 * rows))
  for i, word in enumerate(words):
    axis = figure.add_subplot(rows, columns, i + 1)
    axis.imshow(picture)
    height, width = picture.shape[:2]
    axis.imshow(maps[i], cmap="gray", alpha=0.6, clim=[0.0, maps[i].max()],
                extent=(0, width, height, 0))
    axis.set_title(word)
    axis.axis("off")
  figure.suptitle(caption)
  figure.tight_layout()
  figure.savefig(out_path, dpi=80)
  plt.close(figure)
  return caption


def _caption(args) -> int:
  captions = caption_files(args.model, args.images, args.beam,
                           args.length_penalty, args.temperature, args.seed)
  for path, caption in zip(args.images, captions):
    print(f"{path}: {caption}")
  if args.attention_png:
    root, ext = os.path.splitext(args.attention_png)
    for i, path in enumerate(args.images):
      out = (args.attention_png if len(args.images) == 1
             else f"{root}-{i}{ext or '.png'}")
      attention_png(args.model, path, out)
      print(f"attention maps of {path}: {out}")
  return 0


_SCORE_LABELS = (("bleu_1", "BLEU-1"), ("bleu_2", "BLEU-2"),
                 ("bleu_3", "BLEU-3"), ("bleu_4", "BLEU-4"),
                 ("cider_d", "CIDEr-D"), ("rouge_l", "ROUGE-L"))


def _bleu(args) -> int:
  # scoring, not caption_metrics: the latter imports TFMA and TensorFlow (seconds).
  from core import scoring  # pylint: disable=g-import-not-at-top
  try:
    image_ids, hypotheses, references = scoring.pair_files(
        args.annotations, args.results, subset=args.subset)
  except scoring.CaptionFileError as e:
    print(f"captioner bleu: error: {e}", file=sys.stderr)
    return 2
  if args.subset:
    print(f"[bleu] scoring the {len(image_ids)} images that have a result",
          file=sys.stderr)
  scores = scoring.caption_scores(hypotheses, references,
                                  pretokenized=args.pretokenized)
  counts = {"images": len(image_ids),
            "references": sum(len(r) for r in references)}
  for key, label in _SCORE_LABELS:
    print(f"{label:<8} {scores[key]:.4f}")
  tokenization = ("taken as tokenized (--pretokenized)" if args.pretokenized
                  else "tokenized as coco-caption does")
  print(f"({counts['images']} images, {counts['references']} reference "
        f"captions, {tokenization})")
  if args.json:
    report = {**scores, **counts}
    try:
      with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    except OSError as e:
      print(f"captioner bleu: error: cannot write {args.json}: {e}",
            file=sys.stderr)
      return 2
  return 0


def _stage(args) -> int:
  from ingest import staging  # pylint: disable=g-import-not-at-top
  try:
    summary = staging.stage(args.src, args.dst, workers=args.workers)
  except staging.StagingError as e:
    print(f"captioner stage: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:  # Before any upload started (while listing).
    print("captioner stage: interrupted", file=sys.stderr)
    return 130
  print(staging.format_summary(summary, args.dst))
  if summary.interrupted:
    return 130  # As a shell reports Ctrl-C.
  return 1 if summary.failed else 0


def _show_component_progress() -> None:
  """Console shows one line per component start and end, progress, warnings.

  TFX reports component progress at INFO level among thousands of other
  INFO lines; Beam relays every worker record. Keep the former, one
  ExampleGen progress line at most every 10 s and warnings (known-harmless
  library ones left out; captioner/console.py), and write everything
  (TFX, TensorFlow, the Beam workers) to a full log file: LocalDagRunner
  keeps no executor logs of its own. The Trainer and Evaluator print()
  their progress lines themselves.
  """
  import logging  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from captioner import console  # pylint: disable=g-import-not-at-top
  progress = re.compile(r"Component (\S+) is (running|finished)")
  cached = re.compile(r"A cached execution (\d+) is used")
  running = [""]

  def component_line(record) -> bool:
    """Keeps TFX's start/end lines and says when a component was reused
    (LocalDagRunner runs one component at a time)."""
    message = record.getMessage()
    started = progress.match(message)
    if started:
      running[0] = started.group(1)
      record.run_line = message
      return True
    reused = cached.match(message)
    if reused:
      record.run_line = (f"Component {running[0]} reused from cache "
                         f"(execution {reused.group(1)}).")
      return True
    return False

  absl_logging.set_verbosity(absl_logging.INFO)
  log_path = console.full_log_path("run")
  full_log = console.full_log_handler(log_path)
  absl_logger = logging.getLogger("absl")
  absl_logger.propagate = False  # root handlers would print every INFO line
  progress_handler = logging.StreamHandler(sys.stdout)
  progress_handler.addFilter(component_line)
  progress_handler.setFormatter(logging.Formatter("[run] %(run_line)s"))
  absl_logger.addHandler(progress_handler)
  absl_logger.addHandler(console.warning_handler())
  absl_logger.addHandler(full_log)
  console.quiet_tensorflow_logger(full_log)
  logging.getLogger().addHandler(full_log)
  logging.getLogger("apache_beam").setLevel(logging.ERROR)
  console.relay_feature_cache_progress("[ExampleGen]",
                                       extra_handlers=[full_log])
  print(f"[run] full log (TFX, TensorFlow, Beam workers): {log_path}",
        flush=True)


def _prepare_data(config) -> str:
  """The dataset root, checked before any component runs.

  Only the bundled default (`data.root: build/sample`) is generated when
  missing; any other root must hold the dataset its config describes.
  """
  from core import config as config_lib  # pylint: disable=g-import-not-at-top
  from ingest import sample  # pylint: disable=g-import-not-at-top
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  data_root = config.resolve(config.data.root)
  if os.path.normpath(config.data.root) == config_lib.SAMPLE_ROOT:
    train_annotations = os.path.join(data_root, config.data.train_annotations)
    if not os.path.exists(train_annotations):
      print(f"[run] generating the sample dataset into {data_root}")
      sample.generate(data_root, num_images=config.data.sample_images,
                      seed=config.data.sample_seed)
  if config.data.feature_cache:
    # The examples come from the cache (checked when the pipeline is
    # built); the dataset only gives the image captioned at the end.
    return data_root
  feature_cache.check_inputs(_sources(config, data_root), "data.root",
                             data_root)
  return data_root


def _sources(config, data_root):
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  return {name: feature_cache.split_source(config.data.dataset, data_root,
                                           split["annotations"], split)
          for name, split in config.data.splits().items()}


def first_eval_image(config, data_root):
  """(path, references) of the first eval image on disk, read by the
  pipeline's own readers (any dataset layout, local or gs://)."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  from ingest import readers  # pylint: disable=g-import-not-at-top
  try:
    for record in readers.read(_sources(config, data_root)["eval"]):
      if (record["image_id"] >= 0 and not record["problem"]
          and FileSystems.exists(record["path"])):
        return record["path"], record["captions"]
  except (OSError, ValueError):
    if not config.data.feature_cache:
      raise
    # Trained from a feature cache: the images need not be here.
  return None, []


def example_gen_summary(pipeline_root: str,
                        examples: Optional[str] = None) -> dict:
  """The newest ExampleGen run's counts (or those of the `examples`
  artifact folder given): split -> processed, skipped."""
  from components import image_caption_example_gen as example_gen  # pylint: disable=g-import-not-at-top
  if examples is not None:
    runs = glob.glob(os.path.join(examples, example_gen.SUMMARY_FILE))
  else:
    runs = glob.glob(os.path.join(pipeline_root, "ImageCaptionExampleGen",
                                  "examples", "*", example_gen.SUMMARY_FILE))
  if not runs:
    return {}
  newest = max(runs, key=lambda p: int(p.split(os.sep)[-2]))
  with open(newest) as f:
    return {"path": os.path.dirname(newest), "splits": json.load(f)}


def imported_cache_summary(cache_dir: str) -> dict:
  """The counts of a `captioner cache-features` output the pipeline
  imported: split -> processed, skipped."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from captioner import cache_features  # pylint: disable=g-import-not-at-top
  path = os.path.join(cache_dir, cache_features.SUMMARY_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return {"path": cache_dir, "splits": json.load(f)["splits"]}


def _latest_run_id(metadata_path: str, pipeline_name: str):
  """The id of the pipeline's newest recorded run, or None."""
  if not os.path.exists(metadata_path):
    return None
  from pipeline import run_record  # pylint: disable=g-import-not-at-top
  record = run_record.latest_run(metadata_path, pipeline_name)
  return record.run_id if record else None


def _check_extractor(config) -> None:
  """Builds the configured extractor once, so that a missing, offline or
  mismatched `features.weights` fails now, not minutes into ExampleGen."""
  from core import extractors  # pylint: disable=g-import-not-at-top
  features = config.features
  spec = extractors.extractor_spec(features.extractor,
                                   features.patch_image_size,
                                   features.patch_size, features.alpha)
  extractors.build_extractor(spec, features.weights, features.patch_size)


def _run(args) -> int:
  from core import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(args.config)
  if args.no_cache:
    config = dataclasses.replace(config, enable_cache=False)
  data_root = _prepare_data(config)
  try:
    _check_extractor(config)
    if config.data.feature_cache:
      from pipeline import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
      pipeline_lib.check_feature_cache(config)
  except (ValueError, RuntimeError) as e:
    print(f"captioner run: error: {e}", file=sys.stderr)
    return 2
  from pipeline import local  # pylint: disable=g-import-not-at-top
  _show_component_progress()
  started = time.time()
  print(f"[run] running the TFX pipeline {config.pipeline_name!r} "
        f"(LocalDagRunner, Beam DirectRunner)", flush=True)
  serving_dir = config.resolve(config.serving_dir)
  pushed_before = latest_version_dir(serving_dir)
  from pipeline import run_record  # pylint: disable=g-import-not-at-top
  from pipeline import validation  # pylint: disable=g-import-not-at-top
  metadata_path = config.resolve(config.metadata_path)

  def this_run():
    record = run_record.latest_run(metadata_path, config.pipeline_name)
    return record if record and record.run_id != run_before else None

  run_before = _latest_run_id(metadata_path, config.pipeline_name)
  try:
    local.run(config)
  except Exception:  # pylint: disable=broad-except
    # A broken data contract stops the run before Transform: say why.
    record = this_run()
    checked = validation.check_config_run(
        config, not_before=None if record else started, run=record)
    print("\n".join(checked.lines), flush=True)
    if checked.stop:
      return 1
    raise
  print(f"[run] pipeline finished in {time.time() - started:.0f} s")
  record = this_run()
  if record is not None:
    print("\n".join(run_record.summary_lines(record)))
  print("\n".join(validation.check_config_run(
      config, not_before=None if record else started, run=record).lines))

  pipeline_root = config.resolve(config.pipeline_root)
  if config.data.feature_cache:
    cached = imported_cache_summary(config.data.feature_cache)
  else:
    cached = example_gen_summary(
        pipeline_root,
        record.output("ImageCaptionExampleGen", "examples") if record else None)
  if cached:
    from ingest import feature_cache  # pylint: disable=g-import-not-at-top
    for line in feature_cache.summary_lines(cached["splits"]):
      print(f"[run] examples {line}")
    if any(s["skipped"] for s in cached["splits"].values()):
      print(f"[run] skipped images (missing files among them) are listed in "
            f"{os.path.join(cached['path'], 'dead_letters')}")
  evaluation = record.output("Evaluator", "evaluation") if record else None
  bleu = latest_bleu(pipeline_root, evaluation)
  pushed = latest_version_dir(serving_dir)
  image_path, references = first_eval_image(config, data_root)
  print()
  print(f"BLEU-4 on the eval split: {bleu.get('bleu_4', float('nan')):.4f} "
        f"(bar: {config.evaluation.bleu4_threshold}; "
        + (f"beam search of width {config.evaluation.beam_width})"
           if config.evaluation.beam_width else "greedy decoding)"))
  if config.evaluation.gate_metric == "cider_d":
    from components import caption_evaluator  # pylint: disable=g-import-not-at-top
    cider_d = caption_evaluator.latest_candidate_metrics(
        pipeline_root, evaluation).get("cider_d", float("nan"))
    print(f"CIDEr-D on the eval split: {cider_d:.4f} "
          f"(bar: {config.evaluation.cider_d_threshold}; the gate metric)")
  if pushed is None:
    print("The model was not blessed, so nothing was pushed to "
          f"{serving_dir}.")
    return 1
  if record is not None and record.state("Pusher") == "cached":
    print("Nothing changed since the run that pushed this model (its Pusher "
          "was reused from the cache).")
  elif pushed == pushed_before:
    print("This run's model was not blessed (below the bar or below the "
          "last blessed model), so it was not pushed; captioning with the "
          "model pushed before.")
  print(f"Pushed model: {pushed}")
  if image_path is None:
    print("No eval image was found on disk to caption.")
    return 0
  caption = caption_files(pushed, [image_path])[0]
  print(f"Image: {image_path}")
  print(f"Caption: {caption}")
  print(f"References: {references[:2]}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="captioner",
      description="Train, evaluate and ship an image-captioning model with TFX.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser(
      "sample", help="write the synthetic sample dataset (COCO layout)",
      description="Write a synthetic dataset of coloured shapes with five "
      "captions per image, in the COCO 2017 captions layout "
      "(annotations/captions_{train,val}2017.json, train2017/, val2017/). "
      "Deterministic for a seed.")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--images", type=int, default=240,
                 help="number of images, train and eval together (default 240)")
  p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  p.set_defaults(func=_sample)

  p = sub.add_parser(
      "run", help="run the local pipeline on the config's data and caption "
      "one image with the pushed model",
      description="Check the config's dataset (generating the synthetic "
      "sample only for the bundled default, data.root: build/sample), "
      "run the whole TFX pipeline with LocalDagRunner, then caption one eval "
      "image with the pushed model and print the caption, BLEU-4 and where "
      "the model was pushed.")
  p.add_argument("--config", default=None,
                 help="pipeline config YAML (default configs/local.yaml)")
  p.add_argument("--no-cache", action="store_true",
                 help="run every component, reusing no earlier output "
                 "(enable_cache: false)")
  p.set_defaults(func=_run)

  p = sub.add_parser(
      "caption", help="caption images with an exported or pushed model",
      description="Print one caption per image, computed by the SavedModel's "
      "serving_default signature from the raw image bytes.")
  p.add_argument("--model", required=True,
                 help="SavedModel folder (build/serving/<version>), or a "
                 "serving folder (build/serving: its newest version)")
  p.add_argument("images", nargs="+", help="JPEG or PNG files")
  p.add_argument("--beam", type=int, default=0, metavar="K",
                 help="beam search of width K (signature beam_search) "
                 "instead of greedy decoding")
  p.add_argument("--length-penalty", type=float, default=0.0,
                 help="GNMT length penalty alpha for --beam (0: none)")
  p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                 help="sample each word from softmax(logits / T) (signature "
                 "sample) instead of greedy decoding; 0 is greedy")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of --temperature sampling (same seed, same "
                 "captions)")
  p.add_argument("--attention-png", default="", metavar="OUT.png",
                 help="also draw each greedy word over the image with its "
                 "attention map (OUT-<i>.png for several images)")
  p.set_defaults(func=_caption)

  p = sub.add_parser(
      "bleu", help="score COCO-format results: BLEU-1..4, CIDEr-D, ROUGE-L",
      description="coco-caption's corpus BLEU-1..4, CIDEr-D and ROUGE-L "
      "(the Evaluator's definitions, core/scoring.py; no Java) of generated "
      "captions against reference captions, both tokenized as coco-caption "
      "tokenizes (Stanford PTB rules, lowercased, its punctuation removed) "
      "unless --pretokenized. CIDEr-D's document frequencies come from the "
      "references of the images scored. Every result must name an annotated "
      "image, with one caption per image; every annotated image must have a "
      "result unless --subset is given. Exits with 2 and a message on bad "
      "input.")
  p.add_argument("--annotations", required=True,
                 help="reference captions, COCO captions format "
                 "(e.g. annotations/captions_val2017.json)")
  p.add_argument("--results", required=True,
                 help='generated captions, COCO results format: '
                 '[{"image_id": ..., "caption": ...}]')
  p.add_argument("--json", metavar="OUT", default=None,
                 help="also write the scores to this JSON file (keys bleu_1"
                 "..bleu_4, cider_d, rouge_l, images, references)")
  p.add_argument("--pretokenized", action="store_true",
                 help="the captions are already tokenized (space-separated "
                 "tokens, e.g. coco-caption's tokenizer output): split on "
                 "whitespace only, no PTB tokenization, lowercasing or "
                 "punctuation removal")
  p.add_argument("--subset", action="store_true",
                 help="score only the annotated images that have a result "
                 "(CIDEr-D then depends on the subset) instead of failing")
  p.set_defaults(func=_bleu)

  p = sub.add_parser(
      "stage", help="upload a dataset folder to GCS, skipping what is there",
      description="Upload every file under SRC to gs://BUCKET/PREFIX/<path "
      "relative to SRC> with google-cloud-storage, in parallel. Files whose "
      "object already exists with the same size and MD5 (CRC32C for "
      "composite objects) are skipped, so running it again after an "
      "interruption or a failure uploads only what is missing or changed; "
      "objects are never half-written. Progress goes to stderr, a summary "
      "to stdout. Exit status: 0 done, 1 some files failed, 2 bad arguments, "
      "130 interrupted. Set STORAGE_EMULATOR_HOST to use a GCS emulator.")
  p.add_argument("--src", required=True, help="local dataset folder")
  p.add_argument("--dst", required=True, help="gs://BUCKET/PREFIX")
  p.add_argument("--workers", type=_positive_int, default=8,
                 help="parallel uploads (default 8)")
  p.set_defaults(func=_stage)

  from captioner import cache_features  # pylint: disable=g-import-not-at-top
  cache_features.add_parser(sub)
  return parser


def _positive_int(value: str) -> int:
  number = int(value)
  if number < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
  return number


def main(argv=None) -> int:
  # Keep TensorFlow's C++ log chatter (also in Beam worker processes, which
  # inherit the environment and stderr) out of the console: before
  # TensorFlow is imported (captioner/console.py).
  from captioner import console  # pylint: disable=g-import-not-at-top
  console.quiet_tensorflow_environment()
  parser = build_parser()
  # Only `cache-features` passes options it does not know on to Beam.
  args, extra = parser.parse_known_args(argv)
  if extra and not getattr(args, "accepts_beam_args", False):
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  if argv is None and args.command in ("run", "cache-features", "caption"):
    # The command line itself, not a caller's process (tests, scripts).
    console.filter_stderr()
  try:
    if getattr(args, "accepts_beam_args", False):
      return args.func(args, extra)
    return args.func(args)
  except Exception as e:  # pylint: disable=broad-except
    from core import config as config_lib  # pylint: disable=g-import-not-at-top
    if isinstance(e, (config_lib.ConfigError, FileNotFoundError)):
      print(f"captioner {args.command}: error: {e}", file=sys.stderr)
      return 2
    raise


if __name__ == "__main__":
  sys.exit(main())
