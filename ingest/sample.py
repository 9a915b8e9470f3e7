"""Writes a small synthetic image-captioning dataset in the COCO 2017 layout.

Each picture shows one to three flat shapes (circle, square, triangle) in one of
four saturated colours, each in one of five places (top, left, middle, right,
bottom), on a white or light gray background. Every picture gets five different
captions that are true to it. The world is deliberately tiny (4 colours x 3
shapes x 5 places, a few dozen caption words) so that a small model can learn
it from a couple of hundred images and the pipeline can be run end to end on a
laptop without downloading COCO.

Layout written under `out_dir` (the same as the real COCO captions release):

  annotations/captions_train2017.json
  annotations/captions_val2017.json
  train2017/000000000001.jpg ...
  val2017/000000000193.jpg ...

The output depends only on (num_images, seed, eval_fraction, image_size): the
same arguments give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image
from PIL import ImageDraw

RGB = Tuple[int, int, int]

# Saturated and far apart in RGB so that JPEG noise never confuses them.
COLOURS: Dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 0),
}
BACKGROUNDS: Dict[str, RGB] = {
    "white": (255, 255, 255),
    "gray": (210, 210, 210),
}
SHAPES = ("circle", "square", "triangle")

# Place name -> centre as a fraction of the image side (x, y). The order is
# the reading order in which captions list the shapes.
PLACES: Dict[str, Tuple[float, float]] = {
    "top": (0.5, 0.2),
    "left": (0.2, 0.5),
    "middle": (0.5, 0.5),
    "right": (0.8, 0.5),
    "bottom": (0.5, 0.8),
}
PLACE_PHRASES = {
    "top": "at the top",
    "left": "on the left",
    "middle": "in the middle",
    "right": "on the right",
    "bottom": "at the bottom",
}
# Pairs of places where one shape is directly above / left of the other.
ABOVE = (("top", "middle"), ("top", "bottom"), ("middle", "bottom"))
LEFT_OF = (("left", "middle"), ("left", "right"), ("middle", "right"))

# Half side of a shape and the jitter of its centre, as fractions of the image
# side. Neighbouring places are 0.3 apart, so two shapes are at least
# 0.3 - 2 * MAX_JITTER = 0.25 apart and together at most 2 * MAX_HALF = 0.22
# wide: shapes never touch and stay inside the picture.
MIN_HALF, MAX_HALF = 0.08, 0.11
MAX_JITTER = 0.025

COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
ADJECTIVES = {"circle": "round", "square": "square", "triangle": "triangular"}
CAPTIONS_PER_IMAGE = 5
MIN_IMAGE_SIZE = 48
JPEG_QUALITY = 90
# Fixed metadata: nothing may depend on the clock, or reruns would differ.
DATE_CAPTURED = "2017-09-01 00:00:00"
LICENSE_ID = 1


@dataclasses.dataclass(frozen=True)
class Shape:
  colour: str
  kind: str
  place: str
  # Centre and half side, as fractions of the image side.
  x: float
  y: float
  half: float


@dataclasses.dataclass(frozen=True)
class Scene:
  background: str
  shapes: Tuple[Shape, ...]  # Sorted in PLACES order.


def random_scene(rng: np.random.Generator) -> Scene:
  """Draws 1-3 shapes in distinct places; colours and kinds may repeat."""
  count = int(rng.integers(1, 4))
  place_names = list(PLACES)
  chosen = sorted(rng.choice(len(place_names), size=count, replace=False))
  shapes = []
  for index in chosen:
    place = place_names[index]
    anchor_x, anchor_y = PLACES[place]
    jitter_x, jitter_y = rng.uniform(-MAX_JITTER, MAX_JITTER, size=2)
    shapes.append(Shape(
        colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
        kind=SHAPES[int(rng.integers(len(SHAPES)))],
        place=place,
        x=anchor_x + float(jitter_x),
        y=anchor_y + float(jitter_y),
        half=float(rng.uniform(MIN_HALF, MAX_HALF))))
  background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
  return Scene(background=background, shapes=tuple(shapes))


def render(scene: Scene, image_size: int) -> Image.Image:
  """Draws the scene as an RGB picture of image_size x image_size pixels."""
  image = Image.new("RGB", (image_size, image_size),
                    BACKGROUNDS[scene.background])
  draw = ImageDraw.Draw(image)
  for shape in scene.shapes:
    x, y = shape.x * image_size, shape.y * image_size
    half = shape.half * image_size
    box = (round(x - half), round(y - half), round(x + half), round(y + half))
    fill = COLOURS[shape.colour]
    if shape.kind == "circle":
      draw.ellipse(box, fill=fill)
    elif shape.kind == "square":
      draw.rectangle(box, fill=fill)
    else:  # Upright: apex at the top centre of the box, base along its bottom.
      left, top, right, bottom = box
      draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)],
                   fill=fill)
  return image


def _name(shape: Shape) -> str:
  return f"{shape.colour} {shape.kind}"


def _located(shape: Shape) -> str:
  return f"a {_name(shape)} {PLACE_PHRASES[shape.place]}"


def _join(parts: Sequence[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  if len(parts) == 1:
    return parts[0]
  return ", ".join(parts[:-1]) + " and " + parts[-1]


def _plural_noun(shapes: Sequence[Shape]) -> str:
  """'circles' when all shapes are circles, 'shapes' when kinds are mixed."""
  kinds = {shape.kind for shape in shapes}
  return kinds.pop() + "s" if len(kinds) == 1 else "shapes"


def _relation(shapes: Sequence[Shape]) -> str:
  """'a blue square above a red circle[, and ...]', or '' if none is aligned.

  Only pairs of places that are exactly above / beside each other are used,
  so the relation holds whatever the jitter.
  """
  by_place = {shape.place: shape for shape in shapes}
  for pairs, word in ((ABOVE, "above"), (LEFT_OF, "to the left of")):
    for first, second in pairs:
      if first in by_place and second in by_place:
        a, b = by_place[first], by_place[second]
        caption = f"a {_name(a)} {word} a {_name(b)}"
        others = [_located(s) for s in shapes if s is not a and s is not b]
        if others:
          caption += ", and " + _join(others)
        return caption
  return ""


def _describe_one(shape: Shape, background: str) -> List[str]:
  place = PLACE_PHRASES[shape.place]
  name = _name(shape)
  return [
      f"a {name} {place}",
      f"there is one {name} {place} of the picture",
      f"a single {name} sits {place}",
      f"a {shape.colour} {ADJECTIVES[shape.kind]} shape {place} of the image",
      f"a {background} background with one {name} {place}",
  ]


def _describe_many(shapes: Sequence[Shape], background: str) -> List[str]:
  count = COUNT_WORDS[len(shapes)]
  listed = _join([_located(shape) for shape in shapes])
  by_colour = _join([f"a {shape.colour} one {PLACE_PHRASES[shape.place]}"
                     for shape in shapes])
  unplaced = _join([f"a {_name(shape)}" for shape in shapes])
  return [
      f"{count} shapes: {listed}",
      f"there are {count} shapes in the picture, {listed}",
      _relation(shapes) or listed,
      f"{count} {_plural_noun(shapes)}, {by_colour}",
      f"a {background} background with {unplaced}",
  ]


def describe(scene: Scene) -> List[str]:
  """Five different, true captions for the scene, from fixed templates.

  Fixed templates (rather than random wording) keep the vocabulary small and
  the references consistent, so BLEU against them is learnable.
  """
  if len(scene.shapes) == 1:
    captions = _describe_one(scene.shapes[0], scene.background)
  else:
    captions = _describe_many(scene.shapes, scene.background)
  assert len(set(captions)) == CAPTIONS_PER_IMAGE, captions
  return captions


def _coco_file(images: List[dict], annotations: List[dict]) -> dict:
  return {
      "info": {
          "description": "Synthetic shapes captions (captioner sample)",
          "url": "",
          "version": "1.0",
          "year": 2017,
          "contributor": "captioner",
          "date_created": "2017/09/01",
      },
      "licenses": [{"url": "", "id": LICENSE_ID, "name": "CC0 1.0"}],
      "images": images,
      "annotations": annotations,
  }


def _validate(num_images, eval_fraction, image_size) -> None:
  if isinstance(num_images, bool) or not isinstance(num_images, int):
    raise ValueError(f"num_images must be an int, got {num_images!r}")
  if num_images < 2:
    raise ValueError(
        f"num_images must be at least 2 (one train and one eval image), got "
        f"{num_images}")
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(
        f"eval_fraction must be strictly between 0 and 1, got {eval_fraction}")
  if isinstance(image_size, bool) or not isinstance(image_size, int):
    raise ValueError(f"image_size must be an int, got {image_size!r}")
  if image_size < MIN_IMAGE_SIZE:
    raise ValueError(
        f"image_size must be at least {MIN_IMAGE_SIZE} so shapes stay "
        f"recognisable, got {image_size}")


def _train_count(num_images: int, eval_fraction: float) -> int:
  """round(n * (1 - f)), kept within [1, n - 1] so both splits are non-empty."""
  return min(max(round(num_images * (1 - eval_fraction)), 1), num_images - 1)


def generate(out_dir: str,
             num_images: int = 240,
             seed: int = 0,
             eval_fraction: float = 0.2,
             image_size: int = 160) -> dict:
  """Writes the synthetic dataset under out_dir and returns split sizes.

  Args:
    out_dir: Folder to write into; created if missing. Existing files with the
      same names are overwritten.
    num_images: Total number of pictures, at least 2.
    seed: Seed of the only random source, so reruns are byte-identical.
    eval_fraction: Share of pictures (the last ones) that go to val2017.
    image_size: Side of the square pictures in pixels.

  Returns:
    {"train": number of train pictures, "eval": number of eval pictures,
     "out_dir": out_dir}.

  Raises:
    ValueError: if an argument is out of range.
  """
  _validate(num_images, eval_fraction, image_size)
  out_dir = os.fspath(out_dir)
  num_train = _train_count(num_images, eval_fraction)
  splits = {"train2017": ([], []), "val2017": ([], [])}
  for split in splits:
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
  rng = np.random.default_rng(seed)
  annotation_id = 0
  for index in range(num_images):
    # Ids start at 1 and run across both splits, so they are unique overall.
    image_id = index + 1
    split = "train2017" if index < num_train else "val2017"
    images, annotations = splits[split]
    scene = random_scene(rng)
    file_name = "%012d.jpg" % image_id
    render(scene, image_size).save(
        os.path.join(out_dir, split, file_name), "JPEG", quality=JPEG_QUALITY)
    images.append({
        "id": image_id,
        "file_name": file_name,
        "width": image_size,
        "height": image_size,
        "license": LICENSE_ID,
        "coco_url": "",
        "date_captured": DATE_CAPTURED,
        "flickr_url": "",
    })
    for caption in describe(scene):
      annotation_id += 1
      annotations.append(
          {"id": annotation_id, "image_id": image_id, "caption": caption})

  annotations_dir = os.path.join(out_dir, "annotations")
  os.makedirs(annotations_dir, exist_ok=True)
  for split, (images, annotations) in splits.items():
    path = os.path.join(annotations_dir, f"captions_{split}.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(_coco_file(images, annotations), f)
  return {"train": num_train, "eval": num_images - num_train,
          "out_dir": out_dir}
