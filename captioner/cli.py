"""`captioner`: the one command line for everything a person does by hand."""

import argparse
import glob
import json
import os
import sys
import time


def _sample(args) -> int:
  from captioner import sample  # pylint: disable=g-import-not-at-top
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


def latest_bleu(pipeline_root: str):
  """BLEU-1..4 of the newest Evaluator run under the pipeline root."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  runs = glob.glob(os.path.join(pipeline_root, "Evaluator", "evaluation", "*"))
  if not runs:
    return {}
  newest = max(runs, key=lambda p: int(os.path.basename(p)))
  scores = {}
  for metrics in tfma.load_metrics(newest):
    for kv in metrics.metric_keys_and_values:
      # With a baseline, TFMA names the models "candidate" and "baseline".
      key = kv.key
      if (key.name.startswith("bleu_") and not key.is_diff
          and key.model_name in ("", "candidate")):
        scores[key.name] = kv.value.double_value.value
  return scores


def caption_files(model_dir: str, paths):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model = tf.saved_model.load(model_dir)
  images = [tf.io.gfile.GFile(p, "rb").read() for p in paths]
  out = model.signatures["serving_default"](image_bytes=tf.constant(images))
  return [c.decode("utf-8") for c in out["caption"].numpy()]


def _caption(args) -> int:
  for path, caption in zip(args.images, caption_files(args.model, args.images)):
    print(f"{path}: {caption}")
  return 0


def _show_component_progress() -> None:
  """Console shows one line per component start and end, plus warnings.

  TFX reports component progress at INFO level among thousands of other
  INFO lines; Beam relays every worker warning. Keep the former, quiet the
  latter (the full logs are still in the artifacts' executor logs).
  """
  import logging  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  progress = re.compile(r"Component \S+ is (running|finished)")
  absl_logging.set_verbosity(absl_logging.INFO)
  absl_logger = logging.getLogger("absl")
  absl_logger.propagate = False  # root handlers would print every INFO line
  progress_handler = logging.StreamHandler(sys.stdout)
  progress_handler.addFilter(
      lambda record: bool(progress.match(record.getMessage())))
  progress_handler.setFormatter(logging.Formatter("[run] %(message)s"))
  warning_handler = logging.StreamHandler(sys.stderr)
  warning_handler.setLevel(logging.WARNING)
  absl_logger.addHandler(progress_handler)
  absl_logger.addHandler(warning_handler)
  logging.getLogger("apache_beam").setLevel(logging.ERROR)


def _run(args) -> int:
  from captioner import config as config_lib  # pylint: disable=g-import-not-at-top
  from captioner import sample  # pylint: disable=g-import-not-at-top
  config = config_lib.load(args.config)
  data_root = config.resolve(config.data.root)
  train_json = os.path.join(data_root, config.data.train_annotations)
  if not os.path.exists(train_json):
    print(f"[run] generating the sample dataset into {data_root}")
    sample.generate(data_root, num_images=config.data.sample_images,
                    seed=config.data.sample_seed)
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  _show_component_progress()
  started = time.time()
  print(f"[run] running the TFX pipeline {config.pipeline_name!r} "
        f"(LocalDagRunner, Beam DirectRunner)", flush=True)
  serving_dir = config.resolve(config.serving_dir)
  pushed_before = latest_version_dir(serving_dir)
  local_runner.run(config)
  print(f"[run] pipeline finished in {time.time() - started:.0f} s")

  bleu = latest_bleu(config.resolve(config.pipeline_root))
  pushed = latest_version_dir(serving_dir)
  with open(os.path.join(data_root, config.data.eval_annotations)) as f:
    coco = json.load(f)
  image = coco["images"][0]
  image_path = os.path.join(data_root, config.data.eval_images,
                            image["file_name"])
  references = [a["caption"] for a in coco["annotations"]
                if a["image_id"] == image["id"]]
  print()
  print(f"BLEU-4 on the eval split: {bleu.get('bleu_4', float('nan')):.4f} "
        f"(bar: {config.evaluation.bleu4_threshold})")
  if pushed is None:
    print("The model was not blessed, so nothing was pushed to "
          f"{serving_dir}.")
    return 1
  if pushed == pushed_before:
    print("This run's model was not blessed (below the bar or below the "
          "last blessed model), so it was not pushed; captioning with the "
          "model pushed before.")
  caption = caption_files(pushed, [image_path])[0]
  print(f"Pushed model: {pushed}")
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
      description="Generate the sample if the config's data folder is empty, "
      "run the whole TFX pipeline with LocalDagRunner, then caption one eval "
      "image with the pushed model and print the caption, BLEU-4 and where "
      "the model was pushed.")
  p.add_argument("--config", default=None,
                 help="pipeline config YAML (default configs/local.yaml)")
  p.set_defaults(func=_run)

  p = sub.add_parser(
      "caption", help="caption images with an exported or pushed model",
      description="Print one caption per image, computed by the SavedModel's "
      "serving_default signature from the raw image bytes.")
  p.add_argument("--model", required=True,
                 help="SavedModel folder, e.g. build/serving/<version>")
  p.add_argument("images", nargs="+", help="JPEG or PNG files")
  p.set_defaults(func=_caption)
  return parser


def main(argv=None) -> int:
  # Keep TensorFlow's C++ start-up chatter (also in Beam worker processes,
  # which inherit the environment) out of the progress output.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except Exception as e:  # pylint: disable=broad-except
    from captioner import config as config_lib  # pylint: disable=g-import-not-at-top
    if isinstance(e, (config_lib.ConfigError, FileNotFoundError)):
      print(f"captioner {args.command}: error: {e}", file=sys.stderr)
      return 2
    raise


if __name__ == "__main__":
  sys.exit(main())
