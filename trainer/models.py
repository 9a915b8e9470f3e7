"""Builds the captioner that `model.architecture` names (configs/*.yaml).

  transformer        A: the Transformer decoder of the TensorFlow tutorial
                     (trainer/model.py), the default.
  show_attend_tell   B: Show, Attend and Tell, a GRU decoder with Bahdanau
                     attention over the grid (trainer/show_attend_tell.py);
                     uses `units`, `rnn_units`, `image_position_embedding`.
  patch_transformer  C: a transformer encoder over the grid's patches,
                     trained from scratch, then model A's decoder
                     (trainer/patch_transformer.py); uses `encoder_layers`
                     (its patch encoder always embeds cell positions).

All take any extractor's grid and share one interface: called on
((image (b, h, w, c), tokens (b, t))) they return logits (b, t, v), and they
have `vocab_size`, `grid`, `max_length` and `greedy_decode`.
"""

from trainer import model as model_lib
from trainer import patch_transformer
from trainer import show_attend_tell

ARCHITECTURES = ("transformer", "show_attend_tell", "patch_transformer")


def build_captioner(model_cfg, vocab_size, grid, label_counts=None):
  """A Keras captioner: ((image (b, h, w, c), tokens (b, t))) -> logits."""
  if model_cfg.architecture == "transformer":
    return model_lib.Captioner(
        vocab_size, grid, num_layers=model_cfg.num_layers,
        units=model_cfg.units, num_heads=model_cfg.num_heads,
        dropout_rate=model_cfg.dropout, max_length=model_cfg.max_length,
        image_position_embedding=model_cfg.image_position_embedding,
        image_projection=model_cfg.image_projection,
        label_counts=label_counts)
  if model_cfg.architecture == "show_attend_tell":
    return show_attend_tell.ShowAttendTell(
        vocab_size, grid, units=model_cfg.units,
        rnn_units=model_cfg.rnn_units, dropout_rate=model_cfg.dropout,
        max_length=model_cfg.max_length,
        image_position_embedding=model_cfg.image_position_embedding,
        label_counts=label_counts)
  if model_cfg.architecture == "patch_transformer":
    return patch_transformer.PatchTransformer(
        vocab_size, grid, num_layers=model_cfg.num_layers,
        encoder_layers=model_cfg.encoder_layers, units=model_cfg.units,
        num_heads=model_cfg.num_heads, dropout_rate=model_cfg.dropout,
        max_length=model_cfg.max_length, label_counts=label_counts)
  raise ValueError(
      f"unknown model.architecture {model_cfg.architecture!r}; choose one of "
      f"{', '.join(ARCHITECTURES)}")
