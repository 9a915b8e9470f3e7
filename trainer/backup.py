"""Where training resumes from: Keras' BackupAndRestore folder, keyed by the
Trainer's inputs, outside the execution's own folders.

A rerun of the Trainer on the same inputs (a retried task, a rerun pipeline)
finds the same folder and continues after its last completed epoch.
"""

import hashlib
import json
import os

import keras
import tensorflow as tf

from core import config as config_lib

# What the trained weights depend on (the backup key hashes these, and the
# fingerprint of the trainer's code when the pipeline passes one).
SECTIONS = ("model", "training", "features")


def backup_key(custom_config, vocab_path, train_files) -> str:
  """Same config, vocabulary and training files (names and sizes) -> same key.

  Content, not artifact URIs: a rerun pipeline writes its (deterministic)
  upstream artifacts to new folders, and should still resume.
  """
  digest = hashlib.sha256()
  digest.update(json.dumps({k: custom_config.get(k) for k in
                            SECTIONS + (config_lib.CODE_FINGERPRINT_KEY,)},
                           sort_keys=True).encode())
  with tf.io.gfile.GFile(vocab_path, "rb") as f:
    digest.update(f.read())
  for pattern in train_files:
    for path in sorted(tf.io.gfile.glob(pattern)):
      digest.update(f"{os.path.basename(path)}:"
                    f"{tf.io.gfile.stat(path).length}".encode())
  return digest.hexdigest()[:16]


def backup_dir(fn_args, train_cfg, vocab_path) -> str:
  """`training.backup_dir`, else <pipeline root>/Trainer/backup/<key>.

  One folder for every worker of a multi-worker run (WorkerBackupAndRestore):
  the chief writes it, and every worker restores from it, so all resume
  after the same epoch. It must be on storage every worker sees (GCS under
  Vertex AI, where the pipeline root is).
  """
  path = train_cfg.backup_dir or os.path.join(
      os.path.dirname(os.path.dirname(fn_args.model_run_dir.rstrip("/"))),
      "backup",
      backup_key(fn_args.custom_config, vocab_path, fn_args.train_files))
  tf.io.gfile.makedirs(os.path.dirname(path))
  return path


class WorkerBackupAndRestore(keras.callbacks.BackupAndRestore):
  """Keras' BackupAndRestore for one worker of several: every worker loads
  the chief's checkpoint when training begins, only the chief writes it
  (each epoch) and removes it (at the end).

  Keras 3's callback knows nothing of workers. A folder per worker lets
  them resume after different epochs when one is killed between its
  checkpoint and the other's, and then they wait on each other's
  collectives for ever; and the chief's removal at the end raced the
  other workers' files inside it.
  """

  def __init__(self, backup_dir_path, chief=True):
    super().__init__(backup_dir_path)
    self.chief = chief

  def on_epoch_end(self, epoch, logs=None):
    if self.chief:
      super().on_epoch_end(epoch, logs)

  def on_train_end(self, logs=None):
    if self.chief:
      super().on_train_end(logs)


def checkpoint_epochs(backup_dir_path: str) -> int:
  """Epochs already done according to Keras' BackupAndRestore files (0 if
  none)."""
  metadata = os.path.join(backup_dir_path, "training_metadata.json")
  if not tf.io.gfile.exists(metadata):
    return 0
  with tf.io.gfile.GFile(metadata) as f:
    # Keras writes the number of epochs completed.
    return int(json.load(f).get("epoch", 0))
