"""Tests for `captioner stage` against a real GCS emulator (no mocks).

The emulator is gcp-storage-emulator from PyPI, started on a free localhost
port for this module; `captioner stage` runs as a subprocess with
STORAGE_EMULATOR_HOST pointing at it, as a person would run it.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from ingest import staging

BIN = os.path.dirname(sys.executable)
CAPTIONER = os.path.join(BIN, "captioner")


def _dataset(root, count, size=2000):
  """`count` files of distinct random bytes in a COCO-like layout."""
  files = {}
  for i in range(count):
    relative = (f"val2017/{i:012d}.jpg" if i else
                "annotations/captions_val2017.json")
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size + i % 7)
    path.write_bytes(data)
    files[relative] = data
  return files


def _objects(bucket, prefix):
  return {b.name[len(prefix) + 1:]: b.download_as_bytes()
          for b in bucket.client.list_blobs(bucket, prefix=prefix + "/")}


def _count(bucket, prefix):
  return sum(1 for _ in bucket.client.list_blobs(bucket, prefix=prefix + "/"))


def _stage_command(emulator, src, dst, workers=4):
  env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator)
  return [CAPTIONER, "stage", "--src", str(src), "--dst", dst, "--workers",
          str(workers)], env


def _stage(emulator, src, dst, workers=4):
  command, env = _stage_command(emulator, src, dst, workers)
  return subprocess.run(command, env=env, capture_output=True, text=True,
                        timeout=120)


def test_uploads_then_skips_then_reuploads_a_changed_file(
    emulator, bucket, tmp_path):
  files = _dataset(tmp_path, 40)
  dst = f"gs://{bucket.name}/data/coco/"  # A trailing "/" is fine.

  first = _stage(emulator, tmp_path, dst)
  assert first.returncode == 0, first.stderr
  assert "uploaded 40 (" in first.stdout
  assert "skipped 0 (already there), failed 0 of 40 files" in first.stdout
  assert "[stage] 40/40 files" in first.stderr
  assert _objects(bucket, "data/coco") == files

  again = _stage(emulator, tmp_path, dst)
  assert again.returncode == 0, again.stderr
  assert again.stdout.startswith("nothing to upload: all 40 files are "
                                 f"already in {dst}")
  assert "(0 uploaded, 40 skipped, 0 failed)" in again.stderr

  # Same size, other bytes: only the checksum tells them apart.
  changed = "val2017/000000000007.jpg"
  files[changed] = bytes(reversed(files[changed]))
  (tmp_path / changed).write_bytes(files[changed])
  third = _stage(emulator, tmp_path, dst)
  assert third.returncode == 0, third.stderr
  assert "uploaded 1 (" in third.stdout and "skipped 39 " in third.stdout
  assert _objects(bucket, "data/coco") == files


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT],
                         ids=["killed", "ctrl_c"])
def test_rerun_after_interruption_uploads_only_the_rest(
    emulator, bucket, tmp_path, sig):
  # One worker and many small files: a run of a few seconds, stopped as soon
  # as its first objects appear. SIGKILL is a crash or a lost machine;
  # SIGINT is Ctrl-C, which the command handles.
  total = 400
  files = _dataset(tmp_path / "src", total, size=500)
  prefix = "interrupted"
  command, env = _stage_command(emulator, tmp_path / "src",
                                f"gs://{bucket.name}/{prefix}", workers=1)
  # A shell starts background jobs with SIGINT ignored; undo that.
  process = subprocess.Popen(
      command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.monotonic() + 60
  while _count(bucket, prefix) < 5 and time.monotonic() < deadline:
    time.sleep(0.02)
  process.send_signal(sig)
  stdout, _ = process.communicate(timeout=60)
  if sig == signal.SIGINT:
    assert process.returncode == 130
    assert stdout.startswith("interrupted; run the same command again")
  else:
    assert process.returncode == -signal.SIGKILL
  present = _objects(bucket, prefix)
  assert 5 <= len(present) < total, "the run was not stopped mid-way"

  rerun = _stage(emulator, tmp_path / "src", f"gs://{bucket.name}/{prefix}")
  assert rerun.returncode == 0, rerun.stderr
  # Whatever the interrupted run left is whole: the rerun keeps all of it.
  assert all(files[name] == data for name, data in present.items())
  assert (f"uploaded {total - len(present)} (" in rerun.stdout
          and f"skipped {len(present)} (already there)" in rerun.stdout)
  assert _objects(bucket, prefix) == files


def test_failed_uploads_are_counted_and_retried(emulator, bucket, tmp_path):
  files = _dataset(tmp_path, 12)
  dst = f"gs://{bucket.name}/flaky"

  def flaky_upload(blob, path):
    # A network that drops every third image.
    stem = os.path.basename(path).split(".")[0]
    if stem.isdigit() and int(stem) % 3 == 1:
      raise ConnectionError("connection reset by peer")
    staging.upload_file(blob, path)

  summary = staging.stage(str(tmp_path), dst, workers=3, client=bucket.client,
                          upload=flaky_upload, progress=sys.stdout)
  failed = {path for path, _ in summary.failed}
  assert failed == {f"val2017/{i:012d}.jpg" for i in (1, 4, 7, 10)}
  assert (summary.uploaded, summary.skipped) == (8, 0)
  assert all("ConnectionError: connection reset" in e
             for _, e in summary.failed)
  text = staging.format_summary(summary, dst)
  assert "failed 4 of 12 files" in text and "run the same command again" in text

  rerun = _stage(emulator, tmp_path, dst)
  assert rerun.returncode == 0, rerun.stderr
  assert "uploaded 4 (" in rerun.stdout and "skipped 8 " in rerun.stdout
  assert _objects(bucket, "flaky") == files


def test_bad_arguments_are_errors(emulator, bucket, tmp_path):
  _dataset(tmp_path / "src", 2)
  cases = [
      (tmp_path / "src", "s3://x/y", "destination must be gs://BUCKET"),
      (tmp_path / "missing", f"gs://{bucket.name}/x", "source folder not found"),
      (tmp_path / "src", "gs://no-such-bucket-here/x", "bucket not found"),
  ]
  for src, dst, message in cases:
    result = _stage(emulator, src, dst)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
