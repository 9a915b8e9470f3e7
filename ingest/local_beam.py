"""Which Beam runner a job on this machine names.

The FnApiRunner: the DirectRunner's own engine for batch pipelines, the one
every local test and figure of this project ran on. Since Beam 2.68,
`--runner=DirectRunner` first tries Prism, a Go binary it downloads from
GitHub at run time, and falls back to the FnApiRunner only if that fails:
offline, after a failed download (and an empty /tmp/beam-temp* folder each
job); online, on Prism, where `--direct_running_mode` and
ingest/direct_runner_fix.py do not apply. Beam's advice for code that relies
on the FnApiRunner is to name it (apache/beam#34612). It reads the same
options (`--direct_running_mode`, `--direct_num_workers`), and TF Transform
gives it the DirectRunner's TensorFlow session config.

Unlike the DirectRunner, it does not hand the job's options to its
multi-processing workers (they start with none): no option this project
sets is read on a worker.
"""

from typing import Optional

LOCAL_RUNNER = "FnApiRunner"

# Runners whose workers are this machine's processes, on this install
# (Beam resolves a name with or without "Runner", in any case).
_LOCAL_RUNNERS = ("fnapirunner", "directrunner", "switchingdirectrunner",
                  "bundlebaseddirectrunner")


def is_local(runner: Optional[str]) -> bool:
  """Whether `runner` (a Beam --runner value; None: Beam's default, the
  DirectRunner) runs the job on this machine."""
  if not runner:
    return True
  name = runner.rsplit(".", 1)[-1].lower()
  return name in _LOCAL_RUNNERS or name + "runner" in _LOCAL_RUNNERS
