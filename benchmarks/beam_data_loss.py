"""The feature cache's grouping on the multi-processing DirectRunner, with and
without ingest/direct_runner_fix.py: examples processed against written.

  .venv/bin/python benchmarks/beam_data_loss.py [--images 5000] [--rounds 3]

Each round runs one Beam job per variant (the fix on: the project as it
runs; off: Beam's 1000 ms runner-side flush, as before the fix), two
workers: `--images` ids are reshuffled, each becomes a payload of a
MobileNetV2 grid's size (7x7x1280 float16, 125,440 bytes), and the feature
cache's own `WriteShards` (ingest/feature_cache.py: the GroupByKey, GZIP
TFRecord shards; a Flatten with a marker for every shard before the
GroupByKey until 2026-12-07) writes them into the shard
count `num_shards` gives. Prints each job's processed and written counts and
seconds, then how many jobs lost examples per variant. `--count-only`
groups the same way and counts each group instead of writing it. No TensorFlow model,
no photos: a minute and ~630 MB of Beam data a job.
"""

import argparse
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import apache_beam as beam  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
from apache_beam.runners.portability.fn_api_runner import worker_handlers  # pylint: disable=g-import-not-at-top

from ingest import direct_runner_fix  # pylint: disable=g-import-not-at-top
from ingest import feature_cache  # pylint: disable=g-import-not-at-top
from ingest import local_beam  # pylint: disable=g-import-not-at-top

GRID_BYTES = 7 * 7 * 1280 * 2
BEAM_DEFAULT_MS = 1000   # worker_handlers.DATA_BUFFER_TIME_LIMIT_MS in Beam


def _payload(image_id):
  # Random bytes, deflated as the cache's examples are: they do not shrink,
  # so each element keeps a whole grid's size (the cache's real grids
  # deflate to about 36 KB since 2026-12-07, a harder case than theirs).
  payload = np.random.default_rng(image_id).bytes(GRID_BYTES)
  return (image_id, feature_cache.deflate_record(payload))


def run_job(images, fixed, workdir, count_only=False):
  """(processed, written, seconds) of one job."""
  worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = (
      direct_runner_fix.RUNNER_DATA_BUFFER_TIME_LIMIT_MS if fixed
      else BEAM_DEFAULT_MS)
  shards = feature_cache.num_shards(images, GRID_BYTES)
  counts = os.path.join(workdir, "counts")
  options = PipelineOptions([f"--runner={local_beam.LOCAL_RUNNER}",
                             "--direct_running_mode=multi_processing",
                             "--direct_num_workers=2"])
  started = time.time()
  with beam.Pipeline(options=options) as pipeline:
    examples = (pipeline
                | "Ids" >> beam.Create(list(range(images)))
                | "Reshuffle" >> beam.Reshuffle()
                | "Payload" >> beam.Map(_payload))
    if count_only:   # WriteShards' grouping, counting instead of writing
      written = (examples
                 | "ShardKey" >> beam.Map(
                     lambda kv: (feature_cache.shard_of(kv[0], shards), kv))
                 | "GroupShards" >> beam.GroupByKey()
                 | "Count" >> beam.MapTuple(
                     lambda shard, group: (shard, sum(1 for _ in group))))
    else:
      written = examples | "WriteShards" >> feature_cache.WriteShards(  # pylint: disable=no-value-for-parameter
          os.path.join(workdir, "shards"), shards)
    processed = (examples | "CountProcessed" >> beam.combiners.Count.Globally()
                 | "P" >> beam.Map(lambda n: f"processed {n}"))
    written = (written | "N" >> beam.MapTuple(lambda _, n: n)
               | "SumWritten" >> beam.CombineGlobally(sum)
               | "W" >> beam.Map(lambda n: f"written {n}"))
    _ = ((processed, written) | beam.Flatten()
         | beam.io.WriteToText(counts, shard_name_template=""))
  seconds = time.time() - started
  with open(counts) as f:
    figures = dict(line.split() for line in f)
  return int(figures["processed"]), int(figures["written"]), seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=5000)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--count-only", action="store_true",
                      help="group as WriteShards does but count, not write")
  args = parser.parse_args(argv)
  lost = {True: 0, False: 0}
  print(f"{args.images} examples of {GRID_BYTES} bytes, "
        f"{feature_cache.num_shards(args.images, GRID_BYTES)} shards, "
        "multi_processing with 2 workers", flush=True)
  for round_ in range(1, args.rounds + 1):
    for fixed in (True, False):
      with tempfile.TemporaryDirectory() as workdir:
        processed, written, seconds = run_job(args.images, fixed, workdir,
                                              args.count_only)
      lost[fixed] += written != processed
      print(f"round {round_} fix {'on ' if fixed else 'off'}: processed "
            f"{processed}, written {written}, lost {processed - written} "
            f"({seconds:.0f} s)", flush=True)
  direct_runner_fix.apply()
  print(f"\njobs that lost examples: fix on {lost[True]}/{args.rounds}, "
        f"fix off {lost[False]}/{args.rounds}")
  return 1 if lost[True] else 0


if __name__ == "__main__":
  sys.exit(main())
