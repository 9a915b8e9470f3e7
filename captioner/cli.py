"""`captioner`: the one command line for everything a person does by hand."""

import argparse
import json
import os
import sys
import time

from core import features
from ingest import local_beam
from serving import client as serving_client


def _sample(args) -> int:
  from ingest import sample  # pylint: disable=g-import-not-at-top
  summary = sample.generate(args.out, num_images=args.images, seed=args.seed)
  print(f"wrote {summary['train']} training and {summary['eval']} eval images "
        f"with 5 captions each to {args.out} (COCO 2017 captions layout)")
  return 0


def _caption(args) -> int:
  from serving import client  # pylint: disable=g-import-not-at-top
  captions = client.iter_captions(args.model, args.images, args.beam,
                                  args.length_penalty, args.temperature,
                                  args.seed, args.batch_size)
  for path, caption in zip(args.images, captions):
    print(f"{path}: {caption}", flush=True)
  if args.attention_png:
    from serving import attention  # pylint: disable=g-import-not-at-top
    root, ext = os.path.splitext(args.attention_png)
    for i, path in enumerate(args.images):
      out = (args.attention_png if len(args.images) == 1
             else f"{root}-{i}{ext or '.png'}")
      attention.attention_png(args.model, path, out)
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


def _cache_features(args, extra) -> int:
  from captioner import cache_features  # pylint: disable=g-import-not-at-top
  return cache_features.run(args, extra)


def _caption_dataset(args, extra) -> int:
  from captioner import caption_dataset  # pylint: disable=g-import-not-at-top
  return caption_dataset.run(args, extra)


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
  console.quiet_root_logger()
  logging.getLogger().addHandler(full_log)
  logging.getLogger("apache_beam").setLevel(logging.ERROR)
  console.relay_feature_cache_progress("[ExampleGen]",
                                       extra_handlers=[full_log])
  print(f"[run] full log (TFX, TensorFlow, Beam workers): {log_path}",
        flush=True)


def _run(args) -> int:
  from core import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(args.config)
  if args.no_cache:
    config = config.model_copy(update={"enable_cache": False})
  from pipeline import prepare  # pylint: disable=g-import-not-at-top
  data_root = prepare.prepare_data(config,
                                   report=lambda line: print(f"[run] {line}"))
  try:
    prepare.check_features(config)
  except (ValueError, RuntimeError) as e:
    print(f"captioner run: error: {e}", file=sys.stderr)
    return 2
  from pipeline import local  # pylint: disable=g-import-not-at-top
  _show_component_progress()
  started = time.time()
  print(f"[run] running the TFX pipeline {config.pipeline_name!r} "
        f"(LocalDagRunner, Beam FnApiRunner)", flush=True)
  from serving import client  # pylint: disable=g-import-not-at-top
  serving_dir = config.resolve(config.serving_dir)
  pushed_before = client.latest_version_dir(serving_dir)
  from pipeline import run_record  # pylint: disable=g-import-not-at-top
  from pipeline import validation  # pylint: disable=g-import-not-at-top
  metadata_path = config.resolve(config.metadata_path)

  def this_run():
    record = run_record.latest_run(metadata_path, config.pipeline_name)
    return record if record and record.run_id != run_before else None

  run_before = run_record.latest_run_id(metadata_path, config.pipeline_name)
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

  from pipeline import outputs  # pylint: disable=g-import-not-at-top
  cached = outputs.examples_summary(config, record)
  if cached:
    from ingest import feature_cache  # pylint: disable=g-import-not-at-top
    for line in feature_cache.summary_lines(cached["splits"]):
      print(f"[run] examples {line}")
    if any(s["skipped"] for s in cached["splits"].values()):
      print(f"[run] skipped images (missing files among them) are listed in "
            f"{os.path.join(cached['path'], 'dead_letters')}")
  evaluation = record.output("Evaluator", "evaluation") if record else None
  metrics = outputs.latest_candidate_metrics(
      config.resolve(config.pipeline_root), evaluation)
  pushed = client.latest_version_dir(serving_dir)
  image_path, references = outputs.first_eval_image(config, data_root)
  print()
  print(f"BLEU-4 on the eval split: {metrics.get('bleu_4', float('nan')):.4f} "
        f"(bar: {config.evaluation.bleu4_threshold}; "
        + (f"beam search of width {config.evaluation.beam_width})"
           if config.evaluation.beam_width else "greedy decoding)"))
  if config.evaluation.gate_metric == "cider_d":
    cider_d = metrics.get("cider_d", float("nan"))
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
  caption = client.caption_files(pushed, [image_path])[0]
  print(f"Image: {image_path}")
  print(f"Caption: {caption}")
  print(f"References: {references[:2]}")
  return 0


def _add_sample(subparsers) -> None:
  p = subparsers.add_parser(
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


def _add_run(subparsers) -> None:
  p = subparsers.add_parser(
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


def _add_caption(subparsers) -> None:
  p = subparsers.add_parser(
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
                 help="seed of --temperature sampling (same seed and "
                 "--batch-size, same captions)")
  p.add_argument("--batch-size", type=int,
                 default=serving_client.DEFAULT_BATCH_SIZE, metavar="N",
                 help="images per call of the model (default %(default)s); "
                 "each batch's captions print when it is done")
  p.add_argument("--attention-png", default="", metavar="OUT.png",
                 help="also draw each greedy word over the image with its "
                 "attention map (OUT-<i>.png for several images)")
  p.set_defaults(func=_caption)


def _add_bleu(subparsers) -> None:
  p = subparsers.add_parser(
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


def _add_stage(subparsers) -> None:
  p = subparsers.add_parser(
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


def _add_cache_features(subparsers) -> None:
  p = subparsers.add_parser(
      "cache-features", help="cache image features of a dataset with Beam "
      "(locally or on Dataflow), outside the pipeline",
      description="Decode every image of a dataset, run the feature "
      "extractor through Beam RunInference and write GZIP TFRecord shards of "
      "float16 features and captions, one folder per split. Bad images and "
      "captions are skipped and listed in <out>/dead_letters/. Unknown "
      "options are passed to Beam (e.g. --project, --region, --temp_location, "
      "--max_num_workers for DataflowRunner).")
  p.add_argument("--dataset", required=True,
                 choices=("coco2014", "coco2017", "flickr8k", "karpathy",
                          "coco-format"))
  p.add_argument("--annotations", required=True, action="append",
                 help="captions file (COCO json, Flickr8k.token.txt or "
                 "Karpathy dataset_*.json); COCO may repeat it, one per split")
  p.add_argument("--images", required=True, action="append",
                 help="image folder (one, or one per --annotations)")
  p.add_argument("--split-names", default=None,
                 help="comma-separated split names for the COCO files "
                 "(default: from the file names, e.g. train2014)")
  p.add_argument("--extractor", default="inception_v3",
                 help="inception_v3 (default), mobilenet, mobilenet_v2, "
                 "mobilenet_v3_small, mobilenet_v3_large or patches")
  p.add_argument("--alpha", type=float, default=1.0,
                 help="width multiplier of mobilenet / mobilenet_v2 "
                 "(default 1.0; must match the weights file)")
  p.add_argument("--weights", default="imagenet",
                 help="imagenet (default; downloads), a .weights.h5 file, "
                 "or none")
  p.add_argument("--out", required=True, help="output folder (local or gs://)")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--dtype", default=features.DEFAULT_FEATURE_DTYPE,
                 choices=features.FEATURE_DTYPES)
  p.add_argument("--max-pixels", type=int, default=features.MAX_PIXELS,
                 help="skip images with more pixels (default 50M)")
  p.add_argument("--patch-image-size", type=int, default=128)
  p.add_argument("--patch-size", type=int, default=16)
  p.add_argument("--runner", default=local_beam.LOCAL_RUNNER,
                 help="FnApiRunner (default: Beam's DirectRunner engine, "
                 "all local cores; DirectRunner itself first tries to "
                 "download Prism) or DataflowRunner")
  p.set_defaults(func=_cache_features, accepts_beam_args=True)


def _add_caption_dataset(subparsers) -> None:
  p = subparsers.add_parser(
      "caption-dataset", help="caption a folder, glob, dataset or feature "
      "cache with Beam (locally or on Dataflow)",
      description="Caption every image with a Beam job: Beam RunInference "
      "loads the SavedModel once per worker and calls serving_default (or "
      "beam_search) on batches of image bytes, or from_features on a feature "
      "cache's grids. Writes <out>/captions.jsonl (image id, file name, "
      "caption, references), <out>/results.json (COCO results, what "
      "`captioner bleu --results` reads), <out>/references.json (COCO "
      "captions of the references, when the source has them), "
      "<out>/dead_letters/ (every image left out, with its reason) and "
      "<out>/summary.json. Unknown options are passed to Beam (e.g. "
      "--project, --region, --temp_location, --max_num_workers for "
      "DataflowRunner).")
  p.add_argument("--model", required=True,
                 help="SavedModel folder or serving folder (its newest "
                 "version), local or gs://")
  p.add_argument("--images", default=None, metavar="SOURCE",
                 help="a folder of image files, a glob (quote it), or with "
                 "--dataset the dataset's image folder")
  p.add_argument("--features", default=None, metavar="CACHE",
                 help="instead of --images: the --out of `captioner "
                 "cache-features` (every split) or one split folder of it "
                 "(signature from_features: no decoding, no extractor)")
  p.add_argument("--dataset", default=None,
                 choices=("coco2014", "coco2017", "flickr8k", "karpathy",
                          "coco-format"),
                 help="read --images as this dataset layout (ids and "
                 "references from --annotations)")
  p.add_argument("--annotations", action="append", default=None,
                 help="the dataset's captions file (as for cache-features)")
  p.add_argument("--split-names", default=None,
                 help="comma-separated split names for the COCO files")
  p.add_argument("--out", required=True, help="output folder (local or gs://)")
  p.add_argument("--beam", type=int, default=0, metavar="K",
                 help="beam search of width K (signature beam_search) "
                 "instead of greedy decoding (images only)")
  p.add_argument("--length-penalty", type=float, default=0.0,
                 help="GNMT length penalty alpha for --beam (0: none)")
  p.add_argument("--batch-size", type=_positive_int, default=16,
                 help="images per model call (default 16)")
  p.add_argument("--max-pixels", type=int, default=features.MAX_PIXELS,
                 help="skip images with more pixels (default 50M)")
  p.add_argument("--runner", default=local_beam.LOCAL_RUNNER,
                 help="FnApiRunner (default: Beam's DirectRunner engine, "
                 "all local cores; DirectRunner itself first tries to "
                 "download Prism) or DataflowRunner")
  p.set_defaults(func=_caption_dataset, accepts_beam_args=True)


# Every subcommand, in the order `captioner --help` lists them.
_COMMANDS = (_add_sample, _add_run, _add_caption, _add_caption_dataset,
             _add_bleu, _add_stage, _add_cache_features)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="captioner",
      description="Train, evaluate and ship an image-captioning model with TFX.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for add_command in _COMMANDS:
    add_command(sub)
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
  # Only the Beam commands pass options it does not know on to Beam.
  args, extra = parser.parse_known_args(argv)
  if extra and not getattr(args, "accepts_beam_args", False):
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  # The command line itself, not a caller's process (tests, scripts).
  long_job = argv is None and args.command in (
      "run", "cache-features", "caption", "caption-dataset")
  if long_job:
    console.filter_stderr()
  try:
    if getattr(args, "accepts_beam_args", False):
      code = args.func(args, extra)
    else:
      code = args.func(args)
  except Exception as e:  # pylint: disable=broad-except
    from core import config as config_lib  # pylint: disable=g-import-not-at-top
    from serving import client  # pylint: disable=g-import-not-at-top
    if isinstance(e, (config_lib.ConfigError, FileNotFoundError)):
      print(f"captioner {args.command}: error: {e}", file=sys.stderr)
      return 2
    if isinstance(e, client.CaptionError):
      # Exit status 1, as when the serving client raised SystemExit itself.
      raise SystemExit(f"captioner {args.command}: error: {e}") from None
    raise
  if long_job:
    console.exit_without_teardown(code or 0)
  return code


if __name__ == "__main__":
  sys.exit(main())
