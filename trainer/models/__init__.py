"""The captioners, and `build_captioner` for the one `model.architecture`
names (configs/*.yaml):

  transformer        A: the Transformer decoder of the TensorFlow tutorial
                     (transformer.py), the default.
  show_attend_tell   B: Show, Attend and Tell, a GRU decoder with Bahdanau
                     attention over the grid (show_attend_tell.py); uses
                     `units`, `rnn_units`, `image_position_embedding`.
  patch_transformer  C: a transformer encoder over the grid's patches,
                     trained from scratch, then model A's decoder
                     (patch_transformer.py); uses `encoder_layers` (its patch
                     encoder always embeds cell positions).

The package: base.py (CaptionModel, the base class that owns decoding:
greedy, sampled, beam search, a caption's log-probability), layers.py (the
shared layers, with the cached attention), losses.py (the training loss and
metric), one file per model family.

All take any extractor's grid and share one interface: called on
((image (b, h, w, c), tokens (b, t))) they return logits (b, t, v), and they
have `vocab_size`, `grid`, `max_length`, `greedy_decode` and the rest of
base.CaptionModel.
"""

from trainer.models import patch_transformer
from trainer.models import show_attend_tell
from trainer.models import transformer

ARCHITECTURES = ("transformer", "show_attend_tell", "patch_transformer")


def build_captioner(model_cfg, vocab_size, grid, label_counts=None):
  """A Keras captioner: ((image (b, h, w, c), tokens (b, t))) -> logits."""
  if model_cfg.architecture == "transformer":
    return transformer.Captioner(
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
