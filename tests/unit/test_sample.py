"""Tests for ingest/sample.py: COCO layout, determinism, true captions."""

import collections
import json
import os
import re

import numpy as np
from PIL import Image
import pytest

from ingest import sample

SPLITS = ("train2017", "val2017")
COLOUR_WORDS = "red|green|blue|yellow"
KIND_WORDS = {
    "circle": "circle", "round shape": "circle",
    "square": "square", "square shape": "square",
    "triangle": "triangle", "triangular shape": "triangle",
}
PLACE_WORDS = {
    "at the top": "top", "on the left": "left", "in the middle": "middle",
    "on the right": "right", "at the bottom": "bottom",
}
COUNTS = {"one": 1, "two": 2, "three": 3}

Blob = collections.namedtuple("Blob", "colour kind place x y")


def _load(out_dir, split):
  path = os.path.join(out_dir, "annotations", f"captions_{split}.json")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _captions_by_image(out_dir):
  """{image id: (split, image entry, [captions])} over both splits."""
  result = {}
  for split in SPLITS:
    data = _load(out_dir, split)
    captions = collections.defaultdict(list)
    for annotation in data["annotations"]:
      captions[annotation["image_id"]].append(annotation["caption"])
    for image in data["images"]:
      result[image["id"]] = (split, image, captions[image["id"]])
  return result


def _all_files(out_dir):
  files = {}
  for root, _, names in os.walk(out_dir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, out_dir)] = f.read()
  return files


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("sample"))
  summary = sample.generate(out_dir, num_images=60, seed=3)
  return out_dir, summary


# --- Reading the pictures back, independently of how they were drawn. ---


def _nearest_palette_name(pixels):
  """Names each pixel after the nearest colour or background of the palette."""
  palette = {**sample.COLOURS, **sample.BACKGROUNDS}
  names = list(palette)
  rgb = np.array([palette[name] for name in names], dtype=np.float32)
  distances = np.linalg.norm(
      pixels[:, :, None, :].astype(np.float32) - rgb[None, None], axis=-1)
  return np.array(names)[distances.argmin(axis=-1)]


def _components(mask):
  """4-connected components of a boolean mask, as lists of (row, col)."""
  seen = np.zeros_like(mask)
  components = []
  for start in zip(*np.nonzero(mask)):
    if seen[start]:
      continue
    seen[start] = True
    queue, members = collections.deque([start]), []
    while queue:
      r, c = queue.popleft()
      members.append((r, c))
      for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
        if (0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1]
            and mask[nr, nc] and not seen[nr, nc]):
          seen[nr, nc] = True
          queue.append((nr, nc))
    components.append(members)
  return components


def _kind_from_fill(members):
  """Kind from the share of its box a blob fills: 1, pi/4 or 1/2."""
  rows, cols = np.array(members).T
  box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
  fill = len(members) / box
  if fill < 0.65:
    return "triangle"
  return "circle" if fill < 0.9 else "square"


def _nearest_place(x, y):
  return min(sample.PLACES, key=lambda p: (sample.PLACES[p][0] - x) ** 2 +
             (sample.PLACES[p][1] - y) ** 2)


def analyse(path):
  """Returns (background name, [Blob]) seen in the picture at path."""
  pixels = np.asarray(Image.open(path).convert("RGB"))
  size = pixels.shape[0]
  names = _nearest_palette_name(pixels)
  corners = {names[0, 0], names[0, -1], names[-1, 0], names[-1, -1]}
  assert len(corners) == 1, f"{path}: corners disagree {corners}"
  blobs = []
  min_area = (0.05 * size) ** 2  # Drops stray JPEG pixels along edges.
  for colour in sample.COLOURS:
    for members in _components(names == colour):
      if len(members) < min_area:
        continue
      rows, cols = np.array(members).T
      # The box centre, not the centroid: a triangle's mass sits low.
      x = (cols.min() + cols.max() + 1) / 2 / size
      y = (rows.min() + rows.max() + 1) / 2 / size
      blobs.append(Blob(colour, _kind_from_fill(members), _nearest_place(x, y),
                        x, y))
  return corners.pop(), blobs


# --- Checking captions against what is seen. ---

_KIND = "|".join(sorted(KIND_WORDS, key=len, reverse=True))
_PLACE = "|".join(PLACE_WORDS)
_LOCATED = re.compile(
    rf"\b({COLOUR_WORDS}) ({_KIND}|one) ({_PLACE})\b")
_RELATION = re.compile(
    rf"\b({COLOUR_WORDS}) ({_KIND}) (above|to the left of) a "
    rf"({COLOUR_WORDS}) ({_KIND})\b")
_COUNT = re.compile(r"\b(one|two|three) (shapes|circles|squares|triangles)\b")
_SINGLE = re.compile(r"\b(there is one|a single|with one)\b")


def _matches(blob, colour, kind_words):
  return blob.colour == colour and (
      kind_words == "one" or blob.kind == KIND_WORDS[kind_words])


def caption_errors(captions, background, blobs):
  """Every claim in the captions that the picture contradicts."""
  errors = []
  seen_colours = {blob.colour for blob in blobs}
  for caption in captions:
    mentioned = set(re.findall(rf"\b({COLOUR_WORDS})\b", caption))
    if mentioned - seen_colours:
      errors.append(f"{caption!r}: colours {mentioned - seen_colours} absent")
    for word in sample.BACKGROUNDS:
      if re.search(rf"\b{word} background\b", caption) and word != background:
        errors.append(f"{caption!r}: background is {background}")
    for count_word, noun in _COUNT.findall(caption):
      if COUNTS[count_word] != len(blobs):
        errors.append(f"{caption!r}: {len(blobs)} shapes seen")
      if noun != "shapes" and any(b.kind + "s" != noun for b in blobs):
        errors.append(f"{caption!r}: not all {noun}")
    if _SINGLE.search(caption) and len(blobs) != 1:
      errors.append(f"{caption!r}: {len(blobs)} shapes seen, not one")
    for colour, kind_words, place_words in _LOCATED.findall(caption):
      if not any(_matches(b, colour, kind_words) and
                 b.place == PLACE_WORDS[place_words] for b in blobs):
        errors.append(f"{caption!r}: no {colour} {kind_words} {place_words}")
    for c1, k1, relation, c2, k2 in _RELATION.findall(caption):
      axis = "y" if relation == "above" else "x"
      if not any(_matches(a, c1, k1) and _matches(b, c2, k2) and
                 getattr(a, axis) < getattr(b, axis)
                 for a in blobs for b in blobs if a is not b):
        errors.append(f"{caption!r}: relation does not hold")
  return errors


# --- Tests. ---


def test_layout_and_ids(dataset):
  out_dir, summary = dataset
  for path in ("annotations/captions_train2017.json",
               "annotations/captions_val2017.json", "train2017", "val2017"):
    assert os.path.exists(os.path.join(out_dir, path)), path
  assert summary == {"train": 48, "eval": 12, "out_dir": out_dir}

  image_ids, annotation_ids = [], []
  for split in SPLITS:
    data = _load(out_dir, split)
    assert set(data) == {"info", "licenses", "images", "annotations"}
    assert len(data["images"]) == summary["train" if split == "train2017"
                                          else "eval"]
    listed = {image["id"] for image in data["images"]}
    for image in data["images"]:
      assert set(image) == {"id", "file_name", "width", "height", "license",
                            "coco_url", "date_captured", "flickr_url"}
      assert image["file_name"] == "%012d.jpg" % image["id"]
      with Image.open(os.path.join(out_dir, split, image["file_name"])) as im:
        assert im.format == "JPEG"
        assert im.mode == "RGB"
        assert im.size == (image["width"], image["height"]) == (160, 160)
      image_ids.append(image["id"])
    for annotation in data["annotations"]:
      assert set(annotation) == {"id", "image_id", "caption"}
      assert annotation["image_id"] in listed
      annotation_ids.append(annotation["id"])
    # No stray pictures that the JSON does not list.
    assert sorted(os.listdir(os.path.join(out_dir, split))) == sorted(
        image["file_name"] for image in data["images"])
  assert len(image_ids) == len(set(image_ids)) == 60
  assert len(annotation_ids) == len(set(annotation_ids)) == 60 * 5


def test_five_different_captions_per_image(dataset):
  out_dir, _ = dataset
  for _, image, captions in _captions_by_image(out_dir).values():
    assert len(captions) == 5, image
    assert len(set(captions)) == 5, captions
    for caption in captions:
      assert caption.strip() == caption and caption
      assert re.fullmatch(r"[a-z ,:.]+", caption), caption


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  runs = {}
  for name, seed in (("a", 7), ("b", 7), ("c", 8)):
    sample.generate(str(tmp_path / name), num_images=12, seed=seed)
    runs[name] = _all_files(str(tmp_path / name))
  assert len(runs["a"]) == 12 + 2
  assert runs["a"] == runs["b"]
  assert runs["a"].keys() == runs["c"].keys()
  assert runs["a"] != runs["c"]
  for split in SPLITS:
    name = f"annotations/captions_{split}.json"
    assert runs["a"][name] != runs["c"][name]


def test_captions_are_true_to_the_pictures(dataset):
  out_dir, _ = dataset
  for split, image, captions in _captions_by_image(out_dir).values():
    background, blobs = analyse(
        os.path.join(out_dir, split, image["file_name"]))
    assert 1 <= len(blobs) <= 3, (image, blobs)
    assert caption_errors(captions, background, blobs) == [], blobs
    # Completeness: the first caption lists every shape seen, with its place.
    for blob in blobs:
      assert (f"{blob.colour} {blob.kind} {blob.place}" in
              " ".join(f"{c} {k} {PLACE_WORDS[p]}"
                       for c, k, p in _LOCATED.findall(captions[0]))), captions


def test_truth_check_catches_wrong_captions(dataset):
  """The check above would fail if a caption lied about the picture."""
  out_dir, _ = dataset
  checked = 0
  for split, image, captions in _captions_by_image(out_dir).values():
    background, blobs = analyse(
        os.path.join(out_dir, split, image["file_name"]))
    if len(blobs) != 1:
      continue
    (blob,) = blobs
    other_colour = next(c for c in sample.COLOURS if c != blob.colour)
    other_place = next(p for p, name in PLACE_WORDS.items()
                       if name != blob.place)
    other_kind = next(k for k in sample.SHAPES if k != blob.kind)
    other_background = next(b for b in sample.BACKGROUNDS if b != background)
    place_words = next(p for p, name in PLACE_WORDS.items()
                       if name == blob.place)
    lies = [
        [c.replace(blob.colour, other_colour) for c in captions],
        [c.replace(place_words, other_place) for c in captions],
        [c.replace(f" {blob.kind} ", f" {other_kind} ") for c in captions],
        [c.replace(background, other_background) for c in captions],
        ["two shapes: " + captions[0]],
        [f"a {blob.colour} {blob.kind} above a {blob.colour} {blob.kind}"],
    ]
    for lie in lies:
      assert caption_errors(lie, background, blobs), lie
    checked += 1
  assert checked >= 3


@pytest.mark.parametrize("num_images", [1, 0, -5])
def test_too_few_images_is_an_error(tmp_path, num_images):
  with pytest.raises(ValueError, match="num_images must be at least 2"):
    sample.generate(str(tmp_path), num_images=num_images)
  assert not os.listdir(tmp_path)


def test_two_images_give_one_per_split(tmp_path):
  summary = sample.generate(str(tmp_path), num_images=2, eval_fraction=0.01)
  assert (summary["train"], summary["eval"]) == (1, 1)
