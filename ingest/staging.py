"""Stages a local dataset folder on GCS: parallel, skipping what is there.

`stage(src, "gs://bucket/prefix")` uploads every file under `src` to
`prefix/<path relative to src>` with google-cloud-storage, from a thread pool.
A file whose object already exists with the same content is skipped: the
size must match, then the local MD5 must equal the object's md5Hash (or, for
composite objects, which have no MD5, the local CRC32C its crc32c). One
listing of the prefix gives all sizes and hashes, so a rerun costs a listing
plus hashing, not a request per file. Objects that have no local file are
left alone (nothing is deleted).

Resuming is the same as rerunning. GCS writes an object atomically: a
single-request upload (files up to 8 MiB here) lands whole or not at all, and
a resumable upload (larger files) becomes visible only when its last chunk is
committed. An interrupted run therefore leaves each object complete (old or
new content) or absent, never half-written, and the checksums tell the rerun
which files still need uploading. A large file cut off mid-way is uploaded
again from its start (its unfinished session just expires on GCS).

Uploads are verified too: the library sends a CRC32C (or MD5) with each
upload and GCS rejects content that does not match.

`STORAGE_EMULATOR_HOST` (e.g. localhost:9023) sends every request to a GCS
emulator, with anonymous credentials.

Why our own pool, not google-cloud-storage's `transfer_manager.upload_many`
(tried, 3.17.1): its `skip_if_exists` is `if_generation_match=0`, existence
only, so a changed file would be kept stale (and the emulator ignores the
precondition, so it reuploaded everything); it reports nothing until every
upload is done (no progress lines); Ctrl-C waits for all queued uploads
(7 of 400 objects when interrupted, 400 when it raised); and it calls the
blob's upload itself, so `upload=` could not be swapped. The pool itself is
a dozen lines at the end of `stage()`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import os
import sys
import threading
import time
from typing import Callable, Optional, TextIO

_CHUNK = 1 << 20  # Bytes read at a time when hashing.


class StagingError(ValueError):
  """Bad arguments (not a folder, not a gs:// URL, no bucket); says why."""


@dataclasses.dataclass
class Summary:
  """What a staging run did."""
  total: int = 0
  uploaded: int = 0
  skipped: int = 0
  failed: list = dataclasses.field(default_factory=list)  # (path, error)
  uploaded_bytes: int = 0
  seconds: float = 0.0
  interrupted: bool = False


def parse_gcs_url(url: str) -> tuple:
  """"gs://bucket/a/b/" -> ("bucket", "a/b"); the prefix may be ""."""
  if not url.startswith("gs://"):
    raise StagingError(f"destination must be gs://BUCKET[/PREFIX], got {url!r}")
  bucket, _, prefix = url[len("gs://"):].partition("/")
  if not bucket:
    raise StagingError(f"no bucket in {url!r}")
  return bucket, prefix.strip("/")


def local_files(src: str) -> list:
  """(path relative to src with "/" separators, size) of every file, sorted."""
  if not os.path.isdir(src):
    raise StagingError(f"source folder not found: {src}")
  files = []
  for root, dirs, names in os.walk(src):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(root, name)
      if os.path.isfile(path):
        relative = os.path.relpath(path, src).replace(os.sep, "/")
        files.append((relative, os.path.getsize(path)))
  if not files:
    raise StagingError(f"no files under {src}")
  return files


def _file_hash(path: str, md5: bool) -> str:
  """Base64 MD5 (or CRC32C) of a file, as GCS reports md5Hash / crc32c."""
  if md5:
    digest = hashlib.md5()
  else:
    import google_crc32c  # pylint: disable=g-import-not-at-top
    digest = google_crc32c.Checksum()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return base64.b64encode(digest.digest()).decode("ascii")


def same_content(path: str, size: int, blob) -> bool:
  """Whether the object `blob` (from a listing) holds this file's bytes."""
  if blob is None or blob.size != size:
    return False
  if blob.md5_hash:
    return _file_hash(path, md5=True) == blob.md5_hash
  if blob.crc32c:
    return _file_hash(path, md5=False) == blob.crc32c
  return False


def upload_file(blob, path: str) -> None:
  """Uploads one file; the default checksum="auto" makes GCS verify it."""
  blob.upload_from_filename(path)


def make_client():
  """A storage client; anonymous against STORAGE_EMULATOR_HOST."""
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    from google.auth import credentials  # pylint: disable=g-import-not-at-top
    return storage.Client(
        project=os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator"),
        credentials=credentials.AnonymousCredentials())
  return storage.Client()


class _Progress:
  """Thread-safe counters; a progress line every `interval` s and at the end.

  Lines (not a redrawn bar) so that logs of long runs stay readable.
  """

  def __init__(self, total: int, total_bytes: int, out: TextIO,
               interval: float):
    self._lock = threading.Lock()
    self._out = out
    self._interval = interval
    self._started = self._last_line = time.monotonic()
    self._total_bytes = total_bytes
    self._done_bytes = 0
    self.summary = Summary(total=total)

  def record(self, path: str, size: int, outcome: str, error: str = ""):
    with self._lock:
      s = self.summary
      if outcome == "uploaded":
        s.uploaded += 1
        s.uploaded_bytes += size
      elif outcome == "skipped":
        s.skipped += 1
      else:
        s.failed.append((path, error))
      self._done_bytes += size
      done = s.uploaded + s.skipped + len(s.failed)
      now = time.monotonic()
      if now - self._last_line >= self._interval or done == s.total:
        self._last_line = now
        elapsed = max(now - self._started, 1e-6)
        print(f"[stage] {done}/{s.total} files, "
              f"{_mb(self._done_bytes)}/{_mb(self._total_bytes)} MB "
              f"({s.uploaded} uploaded, {s.skipped} skipped, "
              f"{len(s.failed)} failed), "
              f"{_mb(s.uploaded_bytes / elapsed)} MB/s, {elapsed:.0f} s",
              file=self._out, flush=True)

  def finish(self) -> Summary:
    self.summary.seconds = time.monotonic() - self._started
    return self.summary


def _mb(n: float) -> str:
  return f"{n / 1e6:.1f}"


def stage(src: str, dst: str, workers: int = 8, client=None,
          upload: Callable = upload_file,
          progress: Optional[TextIO] = None,
          progress_interval: float = 2.0) -> Summary:
  """Uploads the files under `src` that `dst` lacks or holds differently.

  Args:
    src: Local folder.
    dst: gs://BUCKET/PREFIX; objects are PREFIX/<path relative to src>.
    workers: Parallel uploads (threads sharing one client).
    client: A google.cloud.storage Client (default `make_client()`).
    upload: Uploads one file to one blob (default `upload_file`); a failure
      it raises is counted in `Summary.failed` and the run goes on.
    progress: Where progress lines go (default stderr).
    progress_interval: Seconds between progress lines (one more at the end).

  Returns:
    A Summary; `interrupted` if Ctrl-C stopped it (files not started then are
    neither uploaded nor skipped: run again).

  Raises:
    StagingError: `src` is not a folder, `dst` not a gs:// URL, or the bucket
      does not exist.
  """
  bucket_name, prefix = parse_gcs_url(dst)
  files = local_files(src)
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  from google.auth import exceptions as auth_exceptions  # pylint: disable=g-import-not-at-top
  try:
    if client is None:
      client = make_client()
    bucket = client.bucket(bucket_name)
    existing = {b.name: b for b in client.list_blobs(
        bucket, prefix=prefix + "/" if prefix else None)}
  except exceptions.NotFound:
    raise StagingError(f"bucket not found: gs://{bucket_name}") from None
  except (exceptions.GoogleAPICallError,
          auth_exceptions.GoogleAuthError) as e:
    # No credentials, no access, no network: nothing can be staged.
    raise StagingError(f"cannot list {dst}: {e}") from None

  def name_of(relative: str) -> str:
    return f"{prefix}/{relative}" if prefix else relative

  tracker = _Progress(
      len(files), sum(size for _, size in files),
      progress if progress is not None else sys.stderr, progress_interval)

  def stage_one(relative: str, size: int) -> None:
    path = os.path.join(src, relative)
    name = name_of(relative)
    try:
      if same_content(path, size, existing.get(name)):
        tracker.record(relative, size, "skipped")
        return
      upload(bucket.blob(name), path)
    except Exception as e:  # pylint: disable=broad-except
      tracker.record(relative, size, "failed", f"{type(e).__name__}: {e}")
      return
    tracker.record(relative, size, "uploaded")

  executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
  try:
    futures = [executor.submit(stage_one, relative, size)
               for relative, size in files]
    for future in concurrent.futures.as_completed(futures):
      future.result()
  except KeyboardInterrupt:
    # Files not started are dropped; those in flight finish (or die with the
    # process), and either way their objects are whole or absent.
    tracker.summary.interrupted = True
    executor.shutdown(wait=False, cancel_futures=True)
  else:
    executor.shutdown()
  return tracker.finish()


def format_summary(summary: Summary, dst: str) -> str:
  """The closing lines of `captioner stage`."""
  s = summary
  if s.interrupted:
    head = "interrupted; run the same command again to upload the rest. "
  elif s.uploaded == 0 and not s.failed:
    return (f"nothing to upload: all {s.total} files are already in {dst} "
            "with the same content")
  else:
    head = ""
  lines = [f"{head}uploaded {s.uploaded} ({_mb(s.uploaded_bytes)} MB), "
           f"skipped {s.skipped} (already there), failed {len(s.failed)} "
           f"of {s.total} files to {dst} in {s.seconds:.1f} s"]
  for path, error in s.failed[:10]:
    lines.append(f"  failed: {path}: {error}")
  if len(s.failed) > 10:
    lines.append(f"  ... and {len(s.failed) - 10} more")
  if s.failed:
    lines.append("run the same command again to retry the failed files")
  return "\n".join(lines)
