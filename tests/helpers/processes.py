"""The temp folder of a process a test starts and may SIGKILL."""

import os


def killable_tmpdir(folder) -> str:
  """A TMPDIR under `folder` (a test's tmp_path): TensorFlow writes its
  autograph sources to the temp folder and removes them only at a clean
  exit, so those of a killed process stay there instead of in /tmp."""
  path = os.path.join(folder, "killed-tmp")
  os.makedirs(path, exist_ok=True)
  return path
