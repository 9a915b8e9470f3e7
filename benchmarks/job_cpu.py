"""Benchmark: where a running `captioner cache-features` job spends its CPU,
per image, by thread, in its steady state (Linux /proc).

feature_cache_budget.py times each step of the job on its own; this watches
the real job instead. It runs the command given after `--`, reads its
progress lines ("all: 946 / 2000 images ..."), and at each one reads the
CPU time (user + system) of every thread of the command's process and its
child processes, and the machine's idle time. Between the first progress
line (the first image cached: after the start-up, the trace and the first
batch) and the last (every image), the two whose counts are exact (those
between lag by up to a worker's report interval), it prints per thread
name (TensorFlow's op threads are "tf_Compute"; Python's threads all carry
the process's name) the CPU milliseconds per image and the cores used, and
how busy the machine was. A thread that ends inside the window is left
out (the job's threads live as long as it does).

  PYTHONPATH=. .venv/bin/python benchmarks/job_cpu.py -- \\
      .venv/bin/captioner cache-features --dataset coco-format \\
      --annotations DATA/captions.json --images DATA/images \\
      --split-names all --extractor mobilenet_v2 \\
      --weights ../shared/weights/mobilenet_v2_1.0_224_no_top.weights.h5 \\
      --out /tmp/job_cpu_out --direct_running_mode=in_memory

(DATA: the photos and captions that benchmarks/feature_cache.py writes
under its --work-dir.) Compare the tf_Compute figure with
feature_cache_budget.py's forward CPU per image: the same calls, alone.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import time

PROGRESS = re.compile(r"(\d+) / (\d+) images")
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(path: str):
  """(name, the fields after it) of a /proc stat file; None once gone."""
  try:
    with open(path) as f:
      stat = f.read()
  except OSError:
    return None
  return (stat[stat.index("(") + 1:stat.rindex(")")],
          stat[stat.rindex(")") + 2:].split())


def _tree(root: int):
  """root and its descendants' pids."""
  children = collections.defaultdict(list)
  for entry in os.listdir("/proc"):
    stat = _stat(f"/proc/{entry}/stat") if entry.isdigit() else None
    if stat:
      children[int(stat[1][1])].append(int(entry))
  pids, todo = [], [root]
  while todo:
    pid = todo.pop()
    pids.append(pid)
    todo.extend(children.get(pid, ()))
  return pids


def thread_cpu(root: int):
  """{(process role, thread id): (thread name, CPU seconds)} of the tree."""
  out = {}
  for pid in _tree(root):
    role = "main" if pid == root else "child"
    try:
      tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
      continue
    for tid in tids:
      stat = _stat(f"/proc/{pid}/task/{tid}/stat")
      if stat is None:
        continue
      name, fields = stat
      out[(role, tid)] = (f"{role}:{name}",
                          (int(fields[11]) + int(fields[12])) / TICKS)
  return out


def machine_idle():
  """(all, idle + iowait) jiffies of /proc/stat's first line."""
  with open("/proc/stat") as f:
    values = [int(v) for v in f.readline().split()[1:]]
  return sum(values), values[3] + values[4]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="-- then the command to run")
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --")
  # Unbuffered: each progress line must arrive when it is printed.
  process = subprocess.Popen(command, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
  marks = []  # (images done, wall time, threads' CPU, machine jiffies)
  for line in process.stdout:
    sys.stderr.write(line)
    match = PROGRESS.search(line)
    if match:
      marks.append((int(match.group(1)), time.monotonic(),
                    thread_cpu(process.pid), machine_idle()))
  if process.wait():
    return process.returncode
  if len(marks) < 2 or marks[-1][0] - marks[0][0] < 1:
    print("no steady state between the progress lines: give it more images")
    return 1
  (n0, t0, cpu0, (all0, idle0)), (n1, t1, cpu1, (all1, idle1)) = (
      marks[0], marks[-1])
  images, wall = n1 - n0, t1 - t0
  by_name = collections.Counter()
  for key, (name, seconds) in cpu1.items():
    by_name[name] += seconds - cpu0.get(key, (name, 0.0))[1]
  cores = os.cpu_count()
  busy = (1 - (idle1 - idle0) / (all1 - all0)) * cores
  print(f"steady state: images {n0} to {n1} ({images}) in {wall:.1f} s, "
        f"{images / wall:.1f} images/s; machine busy {busy:.2f} of "
        f"{cores} cores")
  print(f"{'thread':28s} {'CPU ms/image':>12s} {'cores':>6s}")
  for name, seconds in by_name.most_common():
    if seconds > 0:
      print(f"{name:28s} {1000 * seconds / images:12.2f} "
            f"{seconds / wall:6.2f}")
  total = sum(by_name.values())
  print(f"{'all':28s} {1000 * total / images:12.2f} {total / wall:6.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
