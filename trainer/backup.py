"""Where training resumes from: Keras' BackupAndRestore folder, keyed by the
Trainer's inputs, outside the execution's own folders.

A rerun of the Trainer on the same inputs (a retried task, a rerun pipeline)
finds the same folder and continues after its last completed epoch.
"""

import hashlib
import json
import os

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


def backup_dir(fn_args, train_cfg, vocab_path, worker_id=None) -> str:
  """`training.backup_dir`, else <pipeline root>/Trainer/backup/<key>; a
  non-chief worker (`worker_id`) gets its own subfolder."""
  path = train_cfg.backup_dir or os.path.join(
      os.path.dirname(os.path.dirname(fn_args.model_run_dir.rstrip("/"))),
      "backup",
      backup_key(fn_args.custom_config, vocab_path, fn_args.train_files))
  if worker_id is not None:
    # Every worker checkpoints; only the chief's is the real one.
    path = os.path.join(path, f"worker-{worker_id}")
  tf.io.gfile.makedirs(os.path.dirname(path))
  return path


def checkpoint_epochs(backup_dir_path: str) -> int:
  """Epochs already done according to Keras' BackupAndRestore files (0 if
  none)."""
  metadata = os.path.join(backup_dir_path, "training_metadata.json")
  if not tf.io.gfile.exists(metadata):
    return 0
  with tf.io.gfile.GFile(metadata) as f:
    # Keras writes the number of epochs completed.
    return int(json.load(f).get("epoch", 0))
