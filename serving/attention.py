"""The tutorial's attention figure: each generated word over the image,
with the attention map the model computed for it (signature attention)."""

import io

from core import features
from serving import client


def attention_png(model_dir: str, image_path: str, out_path: str) -> str:
  """Each generated word over the image with its attention map, as a PNG
  (the tutorial's figure); returns the greedy caption."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model_dir = client.model_version_dir(model_dir)
  model = tf.saved_model.load(model_dir)
  if features.ATTENTION not in model.signatures:
    raise client.CaptionError(
        f"{model_dir} has no {features.ATTENTION} signature (only models "
        "with an incremental decoder export one)")
  data = tf.io.gfile.GFile(image_path, "rb").read()
  out = model.signatures[features.ATTENTION](
      **{features.IMAGE_BYTES: tf.constant([data])})
  caption = out[features.CAPTION].numpy()[0].decode("utf-8")
  words = caption.split()
  maps = out[features.ATTENTION_MAP].numpy()[0]        # (T, h, w)
  picture = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  columns = min(len(words), 4) or 1
  rows = max(1, -(-len(words) // columns))
  figure = plt.figure(figsize=(3 * columns, 3 * rows))
  for i, word in enumerate(words):
    axis = figure.add_subplot(rows, columns, i + 1)
    axis.imshow(picture)
    height, width = picture.shape[:2]
    axis.imshow(maps[i], cmap="gray", alpha=0.6, clim=[0.0, maps[i].max()],
                extent=(0, width, height, 0))
    axis.set_title(word)
    axis.axis("off")
  figure.suptitle(caption)
  figure.tight_layout()
  figure.savefig(out_path, dpi=80)
  plt.close(figure)
  return caption
