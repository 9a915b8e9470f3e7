"""preprocessing_fn through real tf.Transform (Beam), on in-memory examples."""

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata
from tensorflow_transform.tf_metadata import schema_utils

from core import text
from trainer import preprocessing

FEATURE_SPEC = {
    "image_id": tf.io.VarLenFeature(tf.int64),
    "image_features": tf.io.VarLenFeature(tf.string),
    "image_features_shape": tf.io.VarLenFeature(tf.int64),
    "captions": tf.io.VarLenFeature(tf.string),
}

RAW = [
    {"image_id": [1], "image_features": [b"\x00\x01"],
     "image_features_shape": [1, 1, 1],
     "captions": [b"A red circle.", b"a RED circle, on the left"]},
    {"image_id": [2], "image_features": [b"\x02\x03"],
     "image_features_shape": [1, 1, 1],
     "captions": [b"a blue square", b"a single blue square", b"Blue squares!"]},
]


def _transform(tmp_path, raw, custom_config=None):
  metadata = dataset_metadata.DatasetMetadata(
      schema_utils.schema_from_feature_spec(FEATURE_SPEC))
  with tft_beam.Context(temp_dir=str(tmp_path / "tft_tmp")):
    (transformed, _), transform_fn = (
        (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs,
                                                          custom_config),
            output_record_batches=False))
    _ = transform_fn | tft_beam.WriteTransformFn(str(tmp_path / "out"))
  return transformed, tft.TFTransformOutput(str(tmp_path / "out"))


def test_normalization_matches_python_and_tensorflow():
  captions = ["A Red-Circle, on the LEFT!", "ｆｕｌｌ　width", "x_y  z"]
  tf_words = preprocessing.tokenize(tf.constant(captions)).to_list()
  assert [[w.decode() for w in row] for row in tf_words] == [
      text.normalize(c) for c in captions]
  assert text.normalize(captions[0]) == ["a", "red", "circle", "on", "the",
                                         "left"]


def test_captions_become_start_wrapped_ids_per_image(tmp_path):
  transformed, output = _transform(tmp_path, RAW)
  vocab = [w.decode() if isinstance(w, bytes) else w
           for w in output.vocabulary_by_name(preprocessing.VOCAB_NAME)]
  assert vocab[:4] == list(text.RESERVED_TOKENS)
  assert vocab[4] == "a"  # the most frequent word comes first
  assert {"red", "circle", "blue", "square", "squares"} <= set(vocab)

  first, second = transformed
  assert first["caption_lengths"].tolist() == [5, 8]
  assert second["caption_lengths"].tolist() == [5, 6, 4]
  tokens = first["caption_tokens"].tolist()
  assert len(tokens) == 13
  ids = {w: i for i, w in enumerate(vocab)}
  assert tokens[:5] == [text.START_ID, ids["a"], ids["red"], ids["circle"],
                        text.END_ID]
  assert first["image_features"] == b"\x00\x01"
  assert first["image_id"] == 1
  np.testing.assert_array_equal(first["image_features_shape"], [1, 1, 1])


def test_rare_words_map_to_unk_with_a_frequency_threshold(tmp_path):
  transformed, output = _transform(tmp_path, RAW,
                                   {"frequency_threshold": 2})
  vocab = [w.decode() if isinstance(w, bytes) else w
           for w in output.vocabulary_by_name(preprocessing.VOCAB_NAME)]
  assert "left" not in vocab and "squares" not in vocab
  assert {"a", "red", "circle", "blue", "square"} <= set(vocab)
  last_caption = transformed[1]["caption_tokens"].tolist()[-4:]
  assert last_caption == [text.START_ID, vocab.index("blue"), text.UNK_ID,
                          text.END_ID]
