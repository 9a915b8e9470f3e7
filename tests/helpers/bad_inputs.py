"""A generated COCO-format dataset holding every kind of bad input among good
images, with what the feature cache must do with each (used by tests)."""

import io
import json
import os

import numpy as np
from PIL import Image

# A limit the bomb below exceeds while every other image stays far under it.
MAX_PIXELS = 4_000_000


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _photo(rng, size=(64, 48)) -> Image.Image:
  pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  return Image.fromarray(pixels)


def write(out_dir: str, good: int = 6, seed: int = 0):
  """Writes annotations.json and images/; returns the expectations.

  Returns {"processed": {image_id: file_name}, "skipped": {image_id: reason},
  "dropped_captions": {reason: n}, "listed": entries in the file}.
  """
  rng = np.random.default_rng(seed)
  images_dir = os.path.join(out_dir, "images")
  os.makedirs(images_dir, exist_ok=True)
  files = {}  # file name -> bytes
  entries = []  # (image_id, file_name, captions)
  processed, skipped = {}, {}
  dropped = {"empty_caption": 0, "invalid_utf8_caption": 0}

  def add(image_id, file_name, data, captions, outcome):
    if data is not None:
      files[file_name] = data
    entries.append((image_id, file_name, captions))
    if outcome == "processed":
      processed[image_id] = file_name
    elif image_id not in skipped:
      skipped[image_id] = outcome

  captions = [f"a picture number {i}" for i in range(3)]
  next_id = iter(range(1, 1000))
  for _ in range(good):
    i = next(next_id)
    add(i, f"{i:012d}.jpg", _encode(_photo(rng), "JPEG"), captions, "processed")

  photo = _photo(rng)
  jpeg = _encode(photo, "JPEG")
  i = next(next_id)
  add(i, f"{i:012d}.jpg", jpeg[: len(jpeg) // 2], captions, "undecodable_image")
  i = next(next_id)
  add(i, f"{i:012d}.jpg", b"\xff\xd8\xff\xe0" + rng.bytes(2000), captions,
      "undecodable_image")
  i = next(next_id)
  add(i, f"{i:012d}.jpg", _encode(photo, "PNG"), captions, "processed")
  i = next(next_id)
  add(i, f"{i:012d}.jpg", _encode(photo.convert("L"), "JPEG"), captions,
      "processed")
  i = next(next_id)
  add(i, f"{i:012d}.jpg", _encode(photo.convert("CMYK"), "JPEG"), captions,
      "processed")
  i = next(next_id)
  add(i, f"{i:012d}.png", _encode(photo.convert("RGBA"), "PNG"), captions,
      "processed")
  i = next(next_id)
  deep = (rng.random((48, 64)) * 65535).astype(np.uint16)
  add(i, f"{i:012d}.png", _encode(Image.fromarray(deep), "PNG"), captions,
      "processed")
  i = next(next_id)
  # A decompression bomb: a few KB of PNG that would decode to 25M pixels.
  add(i, f"{i:012d}.png", _encode(Image.new("L", (5000, 5000)), "PNG"),
      captions, "too_many_pixels")
  i = next(next_id)
  add(i, f"{i:012d}.jpg", None, captions, "missing_file")
  # The same id twice: the first entry is processed, the second is not.
  i = next(next_id)
  add(i, f"{i:012d}.jpg", _encode(_photo(rng), "JPEG"), captions, "processed")
  add(i, f"{i:012d}-again.jpg", _encode(_photo(rng), "JPEG"), [],
      "duplicate_image_id")
  # Unusable captions are dropped; an image left with none is skipped.
  i = next(next_id)
  add(i, f"{i:012d}.jpg", _encode(_photo(rng), "JPEG"),
      ["", "   \t ", "a fine caption", "\udcffbad bytes\udcfe"], "processed")
  dropped["empty_caption"] += 2
  dropped["invalid_utf8_caption"] += 1
  i = next(next_id)
  add(i, f"{i:012d}.jpg", _encode(_photo(rng), "JPEG"), ["  ", ""],
      "no_captions")
  dropped["empty_caption"] += 2

  for name, data in files.items():
    with open(os.path.join(images_dir, name), "wb") as f:
      f.write(data)
  coco = {"images": [], "annotations": []}
  for image_id, file_name, texts in entries:
    coco["images"].append({"id": image_id, "file_name": file_name})
    for text in texts:
      coco["annotations"].append({"id": len(coco["annotations"]) + 1,
                                  "image_id": image_id, "caption": text})
  # Lone surrogates stand for bytes that are not UTF-8: write them raw, as
  # a file with a broken encoding would hold them.
  text = json.dumps(coco, ensure_ascii=False)
  with open(os.path.join(out_dir, "annotations.json"), "wb") as f:
    f.write(text.encode("utf-8", errors="surrogateescape"))
  return {"processed": processed, "skipped": skipped,
          "dropped_captions": {k: v for k, v in dropped.items() if v},
          "listed": len(entries)}
