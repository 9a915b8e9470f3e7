"""Caption quality of a config on its eval split: train (optional), then score.

  .venv/bin/python benchmarks/quality.py --config configs/flickr8k.yaml \
      --set data.root=../shared/data/flickr8k-224 \
      --set features.weights=../shared/weights/mobilenet_v2_1.0_224_no_top.weights.h5 \
      --pipeline-root build/flickr8k/pipeline_root --out build/quality/a-2x256 \
      [--set model.dropout=0.5 ...] [--model DIR] [--beam 3]

With a pipeline root that already holds ExampleGen..Transform outputs (from
`captioner run` of a config with the same `data.*`, `features.*` and `vocab.*`),
it runs TFX's Trainer executor (trainer/standalone.py: the Trainer component's
own code) with the config's `model.*` and `training.*`, so a tuning run costs
only its training. `--model DIR` scores a model that exists instead.

`--init-from DIR` (with `training.scst_steps` > 0) starts the SCST phase from
an exported model of the same `model.*` (e.g. an earlier cross-entropy run's
`<out>/model/Format-Serving`): its weights are written where the Trainer keeps
a finished cross-entropy phase (trainer/scst.py), under `<out>/backup`, so
the Trainer skips to SCST. Its `history.json` is that earlier run's.

Scoring is what a client of the pushed model gets: every eval image's JPEG
bytes through `sample` at temperature 0 (greedy; also `serving_default`
unless `serving.beam_width` is set) and `beam_search` (width --beam), read
with the pipeline's own readers; references from the same readers. Metrics:
corpus BLEU-1..4 (coco-caption's definition), CIDEr-D and ROUGE-L
(core/scoring.py, tokenized as coco-caption does). Prints one Markdown table
row per decoding and writes `<out>/quality.json` and `<out>/captions.jsonl`.

Tune on the dev split only (Flickr8k's test split is for the final figure).
"""

import argparse
import glob
import json
import os
import sys
import time

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from core import scoring  # pylint: disable=g-import-not-at-top
from core import config as config_lib  # pylint: disable=g-import-not-at-top

BATCH = 32


def overrides(pairs):
  """["a.b=1", ...] -> {"a": {"b": 1}} (values parsed as YAML)."""
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise SystemExit(f"--set {pair!r}: write KEY=VALUE, e.g. model.units=512")
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
  return out


def _newest(pattern):
  runs = glob.glob(pattern)
  if not runs:
    raise SystemExit(f"nothing matches {pattern}: run the pipeline first")
  return max(runs, key=lambda p: int(os.path.basename(p)))


def train(config, pipeline_root, out):
  from trainer import standalone  # pylint: disable=g-import-not-at-top
  model_dir = os.path.join(out, "model")
  standalone.run_trainer(
      transformed_examples=_newest(os.path.join(
          pipeline_root, "Transform", "transformed_examples", "*")),
      transform_graph=_newest(os.path.join(
          pipeline_root, "Transform", "transform_graph", "*")),
      schema=_newest(os.path.join(pipeline_root, "SchemaGen", "schema", "*")),
      model=model_dir, model_run=os.path.join(out, "model_run"),
      custom_config=config.trainer_custom_config(),
      train_steps=config.training.epochs * config.training.steps_per_epoch,
      eval_steps=config.training.eval_steps)
  return os.path.join(model_dir, "Format-Serving")


def seed_cross_entropy(config, model_dir, out):
  """Writes an exported model's weights as this run's finished cross-entropy
  phase and points the config's `training.backup_dir` at it."""
  from trainer import export  # pylint: disable=g-import-not-at-top
  from trainer import scst  # pylint: disable=g-import-not-at-top
  if not config.training.scst_steps:
    raise SystemExit("--init-from needs --set training.scst_steps=N (> 0)")
  captioner = export.restore_captioner(model_dir, config.model).captioner
  history_path = os.path.join(os.path.dirname(os.path.dirname(
      model_dir.rstrip("/"))), "model_run", "history.json")
  history = {}
  if os.path.exists(history_path):
    with open(history_path) as f:
      history = json.load(f)
  backup_dir = os.path.join(out, "backup")
  scst.save_cross_entropy(captioner, backup_dir, history)
  print(f"[quality] cross-entropy weights from {model_dir}", flush=True)
  config.training.backup_dir = backup_dir


def eval_images(config):
  """(image id, path, references) of every readable eval image."""
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  from ingest import readers  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  split = config.data.splits()["eval"]
  source = feature_cache.split_source(
      config.data.dataset, config.resolve(config.data.root),
      split["annotations"], split)
  return [(r["image_id"], r["path"], r["captions"]) for r in readers.read(source)
          if r["image_id"] >= 0 and not r["problem"]
          and FileSystems.exists(r["path"])]


def caption_all(model, images, beam):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  captions = []
  for start in range(0, len(images), BATCH):
    batch = tf.constant([tf.io.gfile.GFile(path, "rb").read()
                         for _, path, _ in images[start:start + BATCH]])
    if beam:
      out = model.signatures["beam_search"](
          image_bytes=batch, beam_width=tf.constant(beam, tf.int32),
          length_penalty=tf.constant(0.0, tf.float32))
    else:
      # Greedy whatever serving.beam_width made serving_default: the
      # sample signature at temperature 0.
      out = model.signatures["sample"](
          image_bytes=batch, temperature=tf.constant(0.0, tf.float32),
          seed=tf.constant(0, tf.int32))
    captions += [c.decode("utf-8") for c in out["caption"].numpy()]
  return captions


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key (dotted), e.g. model.units=512")
  parser.add_argument("--pipeline-root", default=None,
                      help="where the Transform outputs are (default: the "
                      "config's pipeline_root)")
  parser.add_argument("--model", default=None,
                      help="score this SavedModel instead of training one")
  parser.add_argument("--out", required=True)
  parser.add_argument("--beam", type=int, default=3,
                      help="beam width scored beside greedy (0: greedy only)")
  parser.add_argument("--name", default=None, help="row label")
  parser.add_argument("--init-from", default=None, metavar="MODEL",
                      help="SCST from this exported model's weights (the "
                      "cross-entropy phase is not run)")
  args = parser.parse_args(argv)

  config = config_lib.load(args.config, overrides(args.set))
  os.makedirs(args.out, exist_ok=True)
  row = {"name": args.name or os.path.basename(args.out.rstrip("/")),
         "config": args.config, "set": args.set}
  started = time.time()
  model_dir = args.model
  if args.init_from:
    seed_cross_entropy(config, args.init_from, args.out)
  if model_dir is None:
    model_dir = train(config, args.pipeline_root or config.resolve(
        config.pipeline_root), args.out)
    row["train_minutes"] = round((time.time() - started) / 60, 1)
    history = os.path.join(args.out, "model_run", "history.json")
    if os.path.exists(history):
      with open(history) as f:
        row["history"] = json.load(f)

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model = tf.saved_model.load(model_dir)
  images = eval_images(config)
  references = [refs for _, _, refs in images]
  print(f"[quality] scoring {len(images)} eval images with {model_dir}",
        flush=True)
  captions = {}
  for beam in [0] + ([args.beam] if args.beam else []):
    key = "greedy" if not beam else f"beam{beam}"
    tick = time.time()
    captions[key] = caption_all(model, images, beam)
    scores = scoring.caption_scores(captions[key], references)
    row[key] = {**{k: round(v, 4) for k, v in scores.items()},
                "seconds": round(time.time() - tick, 1),
                "distinct": len(set(captions[key]))}
    print(f"| {row['name']} | {key} | {row.get('train_minutes', '-')} | "
          + " | ".join(f"{scores[k]:.4f}" for k in (
              "bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "rouge_l"))
          + f" | {row[key]['distinct']} |", flush=True)
  with open(os.path.join(args.out, "quality.json"), "w") as f:
    json.dump(row, f, indent=1)
  with open(os.path.join(args.out, "captions.jsonl"), "w") as f:
    for i, (image_id, path, refs) in enumerate(images):
      f.write(json.dumps({"image_id": image_id, "path": path,
                          **{k: v[i] for k, v in captions.items()},
                          "references": refs}) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
