"""Works around a race in Beam's multi-processing DirectRunner that drops
data on the way to its workers (seen with apache-beam 2.77.0).

The runner's gRPC data server sends each worker its input through a
`TimeBasedBufferingClosableOutputStream` (`worker_handlers.py`:
`BeamFnDataServicer(DATA_BUFFER_TIME_LIMIT_MS)`, 1000 ms). Its periodic
flush thread hands the buffer to a callback that can block on the full
100 MB send queue, then clears the buffer (`data_plane.py`, `flush`:
`self._flush_callback(self.get())` then `self._clear()`); `write()` does not
take the flush lock, so whatever the main thread writes during that wait is
wiped. A stage whose input is a list of ~10 MB chunks (the feature cache's
Flatten before its GroupByKey: 5,000 Flickr8k grids of 125 KB) loses whole
chunks: 3,528 of 5,000 examples reached the shards once here, and 10 of 13
jobs of a standalone copy of that grouping lost 64-632 without this module
(BENCHMARKS.md, "Beam's multi-processing data loss").

With the limit at 0 the server buffers by size only, flushing synchronously
inside `write()` (`SizeBasedBufferingClosableOutputStream`), so nothing can
be cleared behind the writer; the runner still sends everything at close.
Must run before the pipeline starts its workers; importing this module does
it. in_memory jobs and Dataflow never use this server.
"""

from apache_beam.runners.portability.fn_api_runner import worker_handlers

RUNNER_DATA_BUFFER_TIME_LIMIT_MS = 0


def apply() -> None:
  """Makes the runner's data server buffer by size only (idempotent)."""
  worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = RUNNER_DATA_BUFFER_TIME_LIMIT_MS


apply()
