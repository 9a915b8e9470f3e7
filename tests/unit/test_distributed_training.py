"""The Trainer's run_fn under tf.distribute, for real, on the CPU (issue 17).

Over the transformed examples of a tiny dataset made by TFX's own Transform
executor (tests/helpers/transformed.py: cheaper than a pipeline run, and
the same artifacts):

- two worker processes of TFX's Trainer executor (trainer/standalone.py) on
  localhost under MultiWorkerMirroredStrategy, TF_CONFIG naming both (ports
  picked free): one is SIGKILLed after a checkpoint, both are restarted,
  and training continues after that checkpoint's epoch on both; then both
  print the same weights digest, only the chief wrote the model run folder
  and the export, and the other worker's scratch is gone;
- how the input is sharded among workers (by element, DATA);
- MirroredStrategy over two logical CPU devices against the default
  strategy: same data, seed and global batch.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from core import config as config_lib
from core.config import REPO_ROOT
from tests.helpers import ports
from tests.helpers import transformed

EPOCHS = 3
STEPS = 3
BATCH = 8  # global: 4 a replica on two
# MirroredStrategy against one device: the same global batches, split in
# two, summed gradients; float32 sums in another order differ by ~1e-6 a
# step, so after 9 Adam steps the losses agree to well within this.
LOSS_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def transform_run(tmp_path_factory):
  return transformed.make(tmp_path_factory.mktemp("transformed"))


def _custom_config(backup_dir, epochs=EPOCHS):
  return config_lib.load(os.path.join(REPO_ROOT, "configs", "local.yaml"), {
      "model": {"num_layers": 1, "units": 16, "num_heads": 1, "dropout": 0.0,
                "max_length": 12},
      "training": {"epochs": epochs, "steps_per_epoch": STEPS,
                   "eval_steps": 1, "batch_size": BATCH,
                   "shuffle_buffer": 64, "backup_dir": str(backup_dir),
                   "sample_captions": 1, "early_stopping_patience": 99},
      "features": transformed.FEATURES}).trainer_custom_config()


def _args(tmp_path, folders, name, backup_dir, epochs=EPOCHS):
  args = {**folders, "model": str(tmp_path / name / "model"),
          "model_run": str(tmp_path / name / "model_run"),
          "custom_config": _custom_config(backup_dir, epochs),
          "train_steps": epochs * STEPS, "eval_steps": 1}
  path = tmp_path / f"{name}.json"
  path.write_text(json.dumps(args))
  return str(path)


def _start_workers(tmp_path, args_path, run):
  """Both workers of one cluster; each its own TF_CONFIG and TMPDIR."""
  cluster = {"worker": [f"localhost:{p}" for p in ports.free_ports(2)]}
  workers = []
  for index in range(2):
    scratch = tmp_path / f"{run}-tmp-{index}"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TMPDIR": str(scratch),
           "TF_CONFIG": json.dumps({"cluster": cluster, "task": {
               "type": "worker", "index": index}})}
    log = open(tmp_path / f"{run}-{index}.log", "w+")
    workers.append((subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, "tests", "helpers",
                                      "trainer_process.py"), args_path],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
  return workers


def _output(log):
  log.flush()
  log.seek(0)
  return log.read()


def test_two_workers_resume_together_train_alike_and_only_the_chief_exports(
    tmp_path, transform_run):
  backup = tmp_path / "backup"
  metadata = backup / "training_metadata.json"
  args = _args(tmp_path, transform_run, "mw", backup)

  workers = _start_workers(tmp_path, args, "first")
  deadline = time.time() + 600
  while not metadata.exists() and all(p.poll() is None for p, _ in workers):
    assert time.time() < deadline, "no checkpoint within 10 minutes"
    time.sleep(0.1)
  workers[1][0].send_signal(signal.SIGKILL)  # the non-chief, no cleanup
  # The chief's collectives fail with a dead peer ("Collective ops is
  # aborted"), or it waits on them: either way it stops, killed if need be.
  workers[1][0].wait(timeout=60)
  try:
    workers[0][0].wait(timeout=1)
  except subprocess.TimeoutExpired:
    workers[0][0].send_signal(signal.SIGKILL)
    workers[0][0].wait(timeout=60)
  assert workers[1][0].returncode == -9, _output(workers[1][1])[-3000:]
  assert workers[0][0].returncode != 0, _output(workers[0][1])[-3000:]
  done = json.loads(metadata.read_text())["epoch"]
  assert 1 <= done < EPOCHS
  # Only the chief checkpoints: no per-worker folders.
  assert not glob.glob(str(backup / "worker-*"))

  workers = _start_workers(tmp_path, args, "second")
  outs = []
  for process, log in workers:
    process.wait(timeout=900)
    outs.append(_output(log))
    assert process.returncode == 0, outs[-1][-5000:]
  digests = []
  for index, out in enumerate(outs):
    assert f"resuming after epoch {done}" in out, out[-3000:]
    assert "global batch 8 over 2 replicas" in out  # MWMS
    trained = [int(m) for m in re.findall(rf"Epoch (\d+)/{EPOCHS}\b", out)]
    assert trained == list(range(done + 1, EPOCHS + 1)), out[-3000:]
    digests += re.findall(rf"Trainer: worker {index} weights sha256 (\w+)",
                          out)
  # The same weights on both workers after training (synchronous
  # all-reduce), printed by each from its own model.
  assert len(digests) == 2 and digests[0] == digests[1]

  # The chief's outputs, where TFX expects them; none from the other worker.
  run_dir = tmp_path / "mw" / "model_run"
  history = json.loads((run_dir / "history.json").read_text())
  assert history["epoch"] == list(range(1, EPOCHS + 1))
  samples = (run_dir / "sample_captions.jsonl").read_text().splitlines()
  assert [json.loads(s)["epoch"] for s in samples] == list(
      range(1, EPOCHS + 1))
  # One TensorBoard writer per resumed run (the first run's and this one's).
  assert len(glob.glob(str(run_dir / "logs" / "train" / "*"))) <= 2
  assert tf.saved_model.load(str(tmp_path / "mw" / "model" /
                                 "Format-Serving"))
  # The non-chief's scratch export (and logs) were removed.
  assert not glob.glob(str(tmp_path / "second-tmp-1" / "**" /
                           "saved_model.pb"), recursive=True)
  assert not glob.glob(str(tmp_path / "second-tmp-1" / "**" /
                           "sample_captions.jsonl"), recursive=True)
  assert not backup.exists()


def _pairs(folders, **kwargs):
  """The Trainer's input (trainer/data.py) over the transformed examples."""
  from tfx.components.trainer import fn_args_utils  # pylint: disable=g-import-not-at-top
  from tfx.components.util import tfxio_utils  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  from trainer import data  # pylint: disable=g-import-not-at-top
  examples = standard_artifacts.Examples()
  examples.uri = folders["transformed_examples"]
  accessor = fn_args_utils.DataAccessor(
      tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact(
          [examples], []), record_batch_factory=None, data_view_decode_fn=None)
  schema = tft.TFTransformOutput(
      folders["transform_graph"]).transformed_metadata.schema
  return data.caption_pairs(
      os.path.join(folders["transformed_examples"], "Split-train", "*"),
      accessor, schema, transformed.GRID, BATCH, 12, **kwargs)


def test_workers_share_the_data_by_element(transform_run):
  from tensorflow.python.distribute import input_ops  # pylint: disable=g-import-not-at-top
  # One file per split from Transform on the DirectRunner: too few to
  # share out by file among two workers.
  assert len(glob.glob(os.path.join(transform_run["transformed_examples"],
                                    "Split-train", "*"))) == 1
  dataset = _pairs(transform_run, repeat=False)
  assert (dataset.options().experimental_distribute.auto_shard_policy
          == tf.data.experimental.AutoShardPolicy.DATA)

  def labels(ds):
    return [y.numpy() for _, y in ds]

  every = labels(dataset)
  # What MultiWorkerMirroredStrategy does to each worker's input.
  shares = [labels(input_ops.auto_shard_dataset(dataset, 2, index, 2))
            for index in range(2)]
  assert len(shares[0]) + len(shares[1]) == len(every) >= 4
  for index, share in enumerate(shares):
    for got, want in zip(share, every[index::2]):
      np.testing.assert_array_equal(got, want)


def _run(command, args_path, tmp_path, name):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, "tests", "helpers", command),
       args_path], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=900, env={**{k: v for k, v in os.environ.items()
                           if k != "TF_CONFIG"}, "PYTHONPATH": REPO_ROOT})
  out = result.stdout + result.stderr
  assert result.returncode == 0, out[-5000:]
  history = json.loads((tmp_path / name / "model_run" /
                        "history.json").read_text())
  return out, history


def test_mirrored_on_two_cpus_trains_like_one_device(tmp_path, transform_run):
  one_out, one = _run("trainer_process.py", _args(
      tmp_path, transform_run, "one", tmp_path / "b1"), tmp_path, "one")
  two_out, two = _run("mirrored_trainer.py", _args(
      tmp_path, transform_run, "two", tmp_path / "b2"), tmp_path, "two")
  assert "global batch 8 over 1 replicas" in (
      one_out)
  # The global batch of 8 split into two replicas of 4.
  assert "MirroredStrategy, global batch 8 over 2 replicas" in two_out
  assert "smart bias equal: True" in two_out
  assert one["epoch"] == two["epoch"] == list(range(1, EPOCHS + 1))
  np.testing.assert_allclose(two["loss"], one["loss"], atol=LOSS_TOLERANCE)
  np.testing.assert_allclose(two["val_loss"], one["val_loss"],
                             atol=LOSS_TOLERANCE)

  # The exports answer alike: the same signatures, the same captions.
  from core import features  # pylint: disable=g-import-not-at-top
  models = [tf.saved_model.load(str(tmp_path / n / "model" / "Format-Serving"))
            for n in ("one", "two")]
  assert set(models[0].signatures) == set(models[1].signatures)
  grids = np.random.default_rng(5).normal(size=(3, *transformed.GRID))
  fn = models[0].signatures[features.FROM_FEATURES]
  key = next(iter(fn.structured_input_signature[1]))
  captions = [m.signatures[features.FROM_FEATURES](
      **{key: tf.constant(grids, fn.structured_input_signature[1][key].dtype)}
  )[features.CAPTION].numpy().tolist() for m in models]
  assert captions[0] == captions[1]
