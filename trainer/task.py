"""The Trainer's run_fn: train the captioner and export the serving model.

`fn_args.custom_config` carries the `model`, `training` and `features`
sections of the pipeline config (configs/*.yaml), so hyperparameters live in
one place.
"""

import json
import os

from absl import logging
import keras
import tensorflow as tf
import tensorflow_transform as tft

from captioner import config as config_lib
from components import extractors
from trainer import data
from trainer import export
from trainer import model as model_lib
from trainer import models
from trainer import preprocessing


def _sections(custom_config):
  """The config sections as typed dataclasses (unknown keys rejected)."""
  full = config_lib.from_dict({k: custom_config[k] for k in
                               ("model", "training", "features")})
  return full.model, full.training, full.features


def run_fn(fn_args):
  model_cfg, train_cfg, features_cfg = _sections(fn_args.custom_config)
  keras.utils.set_random_seed(train_cfg.seed)
  transform_output = tft.TFTransformOutput(fn_args.transform_output)
  vocab_size = transform_output.vocabulary_size_by_name(
      preprocessing.VOCAB_NAME)
  spec = extractors.extractor_spec(features_cfg.extractor,
                                   features_cfg.patch_image_size,
                                   features_cfg.patch_size)
  schema = transform_output.transformed_metadata.schema

  def pairs(files, **kwargs):
    return data.caption_pairs(files, fn_args.data_accessor, schema, spec.grid,
                              train_cfg.batch_size, model_cfg.max_length,
                              **kwargs)

  counts = data.label_counts(pairs(fn_args.train_files, repeat=False),
                             vocab_size)
  logging.info("vocabulary: %d tokens; %d label tokens in the training data",
               vocab_size, counts.sum())
  captioner = models.build_captioner(model_cfg, vocab_size, spec.grid,
                                     label_counts=counts)
  captioner.compile(
      optimizer=keras.optimizers.Adam(train_cfg.learning_rate),
      loss=model_lib.masked_loss, metrics=[model_lib.masked_accuracy])

  history = captioner.fit(
      pairs(fn_args.train_files, shuffle_buffer=train_cfg.shuffle_buffer,
            seed=train_cfg.seed),
      epochs=train_cfg.epochs,
      steps_per_epoch=train_cfg.steps_per_epoch,
      validation_data=pairs(fn_args.eval_files),
      validation_steps=train_cfg.eval_steps,
      callbacks=[
          keras.callbacks.EarlyStopping(
              patience=train_cfg.early_stopping_patience,
              restore_best_weights=True),
          keras.callbacks.TensorBoard(
              log_dir=os.path.join(fn_args.model_run_dir, "logs")),
      ],
      verbose=2)
  tf.io.gfile.makedirs(fn_args.model_run_dir)
  with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir,
                                      "history.json"), "w") as f:
    json.dump(history.history, f, indent=1)

  extractor = extractors.build_extractor(spec, features_cfg.weights,
                                         features_cfg.patch_size)
  export.export(fn_args.serving_model_dir, captioner, extractor,
                spec.image_size,
                transform_output.vocabulary_file_by_name(
                    preprocessing.VOCAB_NAME),
                model_cfg.max_length)
  logging.info("exported the serving model to %s", fn_args.serving_model_dir)
