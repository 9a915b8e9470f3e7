"""`captioner caption-dataset`: batch captioning with Beam (serving/batch.py).

Checks the request, runs the job with cache-features' Beam options (the
FnApiRunner, Beam's DirectRunner engine, on every core by default, or
DataflowRunner with this project's setup.py), relays its progress, then
merges the output and prints the counts. Its options are defined with
the other commands' in captioner/cli.py.
"""

import json
import os
import sys
import time


def _request(args) -> dict:
  """What determines the output; a rerun must ask for the same."""
  return {k: getattr(args, k) for k in (
      "model", "images", "features", "dataset", "annotations", "split_names",
      "beam", "length_penalty", "max_pixels")}


def _error(message: str) -> int:
  print(f"captioner caption-dataset: error: {message}", file=sys.stderr)
  return 2


def run(args, extra=()) -> int:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from captioner import cache_features  # pylint: disable=g-import-not-at-top
  from captioner import console  # pylint: disable=g-import-not-at-top
  from ingest import feature_cache  # pylint: disable=g-import-not-at-top
  from serving import batch  # pylint: disable=g-import-not-at-top

  if bool(args.images) == bool(args.features):
    return _error("give --images (a folder, a glob or a dataset's image "
                  "folder) or --features (a feature cache), one of them")
  if bool(args.dataset) != bool(args.annotations):
    return _error("--dataset and --annotations go together")
  if args.features and args.dataset:
    return _error("--features reads the cache's own records; --dataset and "
                  "--annotations are for --images")
  out = args.out
  request = _request(args)
  summary_path = os.path.join(out, batch.SUMMARY_FILE)
  if beam.io.filesystems.FileSystems.exists(summary_path):
    done = json.loads(beam.io.filesystems.FileSystems.open(
        summary_path).read())
    if done.get("request") == request:
      print(f"[caption-dataset] {out} already holds these captions "
            f"(completed {done.get('completed', '?')}); nothing to do.")
      return 0
    return _error(f"{out} holds captions of another request ({summary_path});"
                  " choose another --out or delete it")

  inputs = batch.FEATURES if args.features else batch.IMAGES
  model_dir = batch.check_model(args.model, inputs, args.beam)
  if args.features:
    splits = batch.cache_splits(args.features)
  else:
    dataset = "coco" if args.dataset == "coco-format" else args.dataset
    splits = batch.image_splits(
        args.images, dataset, args.annotations,
        args.split_names.split(",") if args.split_names else None)
  settings = batch.ModelSettings(model_dir, inputs, args.beam,
                                 args.length_penalty, args.batch_size)
  what = (f"features of {args.features}" if args.features else
          f"{args.dataset} images of {args.images}" if args.dataset else
          f"image files {args.images}")
  print(f"[caption-dataset] model {model_dir}; {what}: "
        + ", ".join(f"{s.name} ({s.total or '?'} images)" for s in splits)
        + (f"; beam search of width {args.beam}" if args.beam else ""),
        flush=True)
  batch.clear_partial_output(out)
  options = beam.options.pipeline_options.PipelineOptions(
      cache_features.beam_args(args, extra))
  print(f"[caption-dataset] running the Beam job ({args.runner}); progress "
        "at most every 10 s", flush=True)
  console.relay_feature_cache_progress("[caption-dataset]")
  console.quiet_root_logger()
  started = time.time()
  with beam.Pipeline(options=options) as pipeline:
    batch.add_jobs(pipeline, splits, settings, out, args.max_pixels)
  seconds = time.time() - started
  summary = feature_cache.collect_summary(out)
  for split in splits:  # a split with no image at all wrote no counts
    summary.setdefault(split.name, {"processed": 0, "skipped": {},
                                    "dropped_captions": {}})
  try:
    written = batch.write_outputs(out, summary)
  except batch.IncompleteResultsError as e:
    return _error(str(e))
  for line in feature_cache.summary_lines(summary):
    print(f"[caption-dataset] {line.replace(' processed', ' captioned')}")
  print(f"[caption-dataset] {written['images']} images in {seconds:.0f} s "
        f"({written['images'] / max(seconds, 1e-9):.1f} images/s)")
  print(f"[caption-dataset] captions: {written['captions']}; COCO results: "
        f"{written['results']}; dead letters in "
        f"{os.path.join(out, batch.DEAD_LETTERS_DIR)}/")
  if written["references"]:
    print(f"[caption-dataset] score them: captioner bleu --annotations "
          f"{written['references']} --results {written['results']}")
  if not written["images"]:
    return _error("no image was captioned; see the dead letters")
  feature_cache.write_json(summary_path, {
      "request": request, "splits": summary, "seconds": round(seconds, 1),
      "model": model_dir,
      "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
  return 0
