"""Builds the captioner that `model.architecture` names (configs/*.yaml).

  transformer   A: the Transformer decoder of the TensorFlow tutorial
                (trainer/model.py), the default.
"""

from trainer import model as model_lib

ARCHITECTURES = ("transformer",)


def build_captioner(model_cfg, vocab_size, grid, label_counts=None):
  """A Keras captioner: ((image (b, h, w, c), tokens (b, t))) -> logits."""
  if model_cfg.architecture == "transformer":
    return model_lib.Captioner(
        vocab_size, grid, num_layers=model_cfg.num_layers,
        units=model_cfg.units, num_heads=model_cfg.num_heads,
        dropout_rate=model_cfg.dropout, max_length=model_cfg.max_length,
        image_position_embedding=model_cfg.image_position_embedding,
        label_counts=label_counts)
  raise ValueError(
      f"unknown model.architecture {model_cfg.architecture!r}; choose one of "
      f"{', '.join(ARCHITECTURES)}")
