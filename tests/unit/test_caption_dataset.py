"""`captioner caption-dataset` (serving/batch.py) on a folder of generated
images with corrupt files among them, on a COCO-format dataset holding
every kind of bad input (tests/helpers/bad_inputs.py) and on that dataset's
feature cache; one tiny model exported once (tests/helpers/tiny_model.py).
The Beam jobs run in this process (DirectRunner, in_memory)."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from captioner import cli
from tests.helpers import bad_inputs
from tests.helpers import tiny_model

CAPTIONER = os.path.join(os.path.dirname(sys.executable), "captioner")
BEAM = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
# Files of bad_inputs' image folder that are not images it can caption.
BAD_FILES = {"000000000007.jpg": "undecodable_image",   # truncated JPEG
             "000000000008.jpg": "undecodable_image",   # JPEG header, noise
             "000000000014.png": "too_many_pixels",     # a PNG bomb
             "notes.txt": "undecodable_image"}


def _caption_dataset(out, *args):
  code = cli.main(["caption-dataset", "--out", str(out), "--batch-size", "4",
                   "--max-pixels", str(bad_inputs.MAX_PIXELS), *args, *BEAM])
  assert code == 0
  return str(out)


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _dead_letters(out):
  letters = []
  for path in glob.glob(os.path.join(out, "dead_letters", "*.jsonl")):
    letters += _lines(path)
  return letters


def _served_captions(model_dir, paths):
  model = tf.saved_model.load(model_dir)
  images = [open(p, "rb").read() for p in paths]
  out = model.signatures["serving_default"](image_bytes=tf.constant(images))
  return [c.decode() for c in out["caption"].numpy()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("caption_dataset")
  model_dir = tiny_model.export(str(root / "export"))
  data_dir = str(root / "data")
  expected = bad_inputs.write(data_dir)
  images_dir = os.path.join(data_dir, "images")
  with open(os.path.join(images_dir, "notes.txt"), "w") as f:
    f.write("not an image\n")
  return model_dir, data_dir, images_dir, expected, root


@pytest.fixture(scope="module")
def folder(setup):
  model_dir, _, images_dir, _, root = setup
  out = _caption_dataset(root / "folder", "--model",
                         os.path.dirname(model_dir), "--images", images_dir)
  return out


@pytest.fixture(scope="module")
def dataset(setup):
  model_dir, data_dir, images_dir, _, root = setup
  return _caption_dataset(
      root / "dataset", "--model", model_dir, "--images", images_dir,
      "--dataset", "coco-format",
      "--annotations", os.path.join(data_dir, "annotations.json"),
      "--split-names", "all")


def test_a_folder_gets_one_caption_per_good_image_as_serving_default(
    setup, folder):
  model_dir, _, images_dir, _, _ = setup
  from ingest import readers  # pylint: disable=g-import-not-at-top
  good = sorted(n for n in os.listdir(images_dir) if n not in BAD_FILES)
  lines = _lines(os.path.join(folder, "captions.jsonl"))
  assert [line["image_id"] for line in lines] == sorted(
      readers.stable_id(n) for n in good)
  by_name = {line["file_name"]: line["caption"] for line in lines}
  assert sorted(by_name) == good
  served = _served_captions(model_dir,
                            [os.path.join(images_dir, n) for n in good])
  assert [by_name[n] for n in good] == served
  assert len(set(served)) > 1
  with open(os.path.join(folder, "results.json")) as f:
    results = json.load(f)
  assert results == [{"image_id": line["image_id"],
                      "caption": line["caption"]} for line in lines]
  assert not os.path.exists(os.path.join(folder, "references.json"))


def test_every_bad_file_is_a_dead_letter_with_its_reason_and_counts_add_up(
    setup, folder):
  _, _, images_dir, _, _ = setup
  letters = _dead_letters(folder)
  assert {os.path.basename(d["path"]): d["reason"]
          for d in letters} == BAD_FILES
  assert len(letters) == len(BAD_FILES)
  assert all(d["detail"] for d in letters)
  with open(os.path.join(folder, "summary.json")) as f:
    counts = json.load(f)["splits"]["images"]
  assert counts["skipped"] == {"undecodable_image": 3, "too_many_pixels": 1}
  assert counts["processed"] + 4 == len(os.listdir(images_dir))


def test_a_dataset_layout_skips_as_feature_caching_and_bleu_reads_it(
    setup, dataset):
  _, data_dir, _, expected, _ = setup
  lines = _lines(os.path.join(dataset, "captions.jsonl"))
  assert {line["image_id"]: line["file_name"] for line in lines} == (
      expected["processed"])
  assert all(line["references"] for line in lines)
  letters = _dead_letters(dataset)
  assert {d["image_id"]: d["reason"] for d in letters
          if "caption_index" not in d} == expected["skipped"]
  with open(os.path.join(dataset, "summary.json")) as f:
    counts = json.load(f)["splits"]["all"]
  assert counts["processed"] == len(expected["processed"])
  assert counts["dropped_captions"] == expected["dropped_captions"]
  assert counts["processed"] + sum(counts["skipped"].values()) == (
      expected["listed"])
  # The results against the dataset's own file (some images were skipped:
  # --subset; bleu refuses its non-UTF-8 bytes, so they are left out), and
  # against the references written beside them.
  with open(os.path.join(data_dir, "annotations.json"), "rb") as f:
    coco = json.loads(f.read().decode("utf-8", errors="surrogateescape"))
  coco["annotations"] = [a for a in coco["annotations"]
                         if a["caption"].strip() and a["caption"].isprintable()
                         and "\udcff" not in a["caption"]]
  annotations = os.path.join(dataset, "..", "clean_annotations.json")
  with open(annotations, "w") as f:
    json.dump(coco, f)
  results = os.path.join(dataset, "results.json")
  bleu = subprocess.run(
      [CAPTIONER, "bleu", "--annotations", annotations, "--results", results,
       "--subset"], capture_output=True, text=True, timeout=120)
  assert bleu.returncode == 0, bleu.stderr
  assert f"({len(lines)} images" in bleu.stdout
  assert cli.main(["bleu", "--annotations",
                   os.path.join(dataset, "references.json"),
                   "--results", results]) == 0


def test_from_a_feature_cache_the_captions_equal_those_from_images(
    setup, dataset):
  _, data_dir, images_dir, expected, root = setup
  cache = str(root / "cache")
  assert cli.main([
      "cache-features", "--dataset", "coco-format", "--annotations",
      os.path.join(data_dir, "annotations.json"), "--images", images_dir,
      "--split-names", "all", "--extractor", "patches", "--weights", "none",
      "--patch-image-size", str(tiny_model.IMAGE_SIZE),
      "--patch-size", str(tiny_model.PATCH_SIZE), "--dtype", "float16",
      "--max-pixels", str(bad_inputs.MAX_PIXELS), "--out", cache, *BEAM]) == 0
  model_dir = setup[0]
  out = _caption_dataset(root / "from_features", "--model", model_dir,
                         "--features", cache)
  # float16-cached grids, and served grids rounded to float16 by the
  # export: the same captions, word for word.
  from_features = _lines(os.path.join(out, "captions.jsonl"))
  from_images = _lines(os.path.join(dataset, "captions.jsonl"))
  assert [(x["image_id"], x["caption"]) for x in from_features] == [
      (x["image_id"], x["caption"]) for x in from_images]
  assert len(from_features) == len(expected["processed"])
  assert not _dead_letters(out)


def test_the_model_handler_refuses_one_image_not_the_batch(setup):
  from serving import batch  # pylint: disable=g-import-not-at-top
  model_dir, _, images_dir, _, _ = setup
  handler = batch.CaptionModelHandler(batch.ModelSettings(model_dir))
  model = handler.load_model()
  good = os.path.join(images_dir, "000000000001.jpg")
  with open(good, "rb") as f:
    image = f.read()
  results = handler.run_inference([image, b"not an image", image], model)
  outcomes = [r.inference for r in results]
  assert outcomes[0] == outcomes[2] == {
      "caption": _served_captions(model_dir, [good])[0]}
  assert "not a JPEG, PNG" in outcomes[1]["error"]


def test_beam_search_needs_images(setup, tmp_path):
  with pytest.raises(SystemExit, match="--beam needs images"):
    cli.main(["caption-dataset", "--model", setup[0], "--features",
              str(tmp_path), "--out", str(tmp_path / "out"), "--beam", "2"])
