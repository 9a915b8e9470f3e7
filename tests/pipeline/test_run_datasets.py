"""`captioner run` and `cache-features` on real dataset layouts, with the
mistakes real users make: a wrong data.root, a misspelt image folder, split
files that name images the disk lacks. The pipeline test runs the whole
pipeline on a Karpathy-layout folder with float32 features."""

import glob
import json
import os
import re
import subprocess
import sys

from PIL import Image
import pytest
import tensorflow as tf

from pipeline import outputs
from pipeline import prepare
from serving import client
from core import config as config_lib
from ingest import sample
from ingest import feature_cache
from core.config import REPO_ROOT

CAPTIONER = os.path.join(os.path.dirname(sys.executable), "captioner")


def _captioner(*args, timeout=300):
  return subprocess.run([CAPTIONER, *args], capture_output=True, text=True,
                        timeout=timeout, cwd=REPO_ROOT)


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, names in os.walk(root) for f in names)


def _flickr8k(root, present, missing):
  """The official layout: the token and split files name every image, the
  folder holds only `present` of them."""
  images = root / "Flicker8k_Dataset"
  text = root / "Flickr8k_text"
  images.mkdir(parents=True)
  text.mkdir()
  names = [f"{1000 + i}_abc.jpg" for i in range(present + missing)]
  for i, name in enumerate(names[missing:]):
    Image.new("RGB", (40, 30), (20 * i, 80, 0)).save(images / name)
  (text / "Flickr8k.token.txt").write_text("".join(
      f"{name}#{k}\tA green picture number {i} .\n"
      for i, name in enumerate(names) for k in range(2)))
  # The first listed dev image is missing: the caption must skip it.
  dev = [names[0]] + names[-2:]
  train = [n for n in names if n not in dev]
  (text / "Flickr_8k.trainImages.txt").write_text("\n".join(train))
  (text / "Flickr_8k.devImages.txt").write_text("\n".join(dev))
  return names, dev


def _config(tmp_path, base, root, extra=""):
  path = tmp_path / "config.yaml"
  path.write_text(f"""
base: {REPO_ROOT}/configs/{base}
pipeline_root: {tmp_path}/out/pipeline_root
metadata_path: {tmp_path}/out/metadata.db
serving_dir: {tmp_path}/out/serving
data: {{root: {root}}}
{extra}""")
  return str(path)


def test_a_missing_dataset_fails_before_any_component_naming_data_root(
    tmp_path):
  root = tmp_path / "no-such-folder"
  result = _captioner("run", "--config", _config(tmp_path, "flickr8k.yaml",
                                                 root))
  assert result.returncode == 2, result.stdout + result.stderr
  assert f"data.root '{root}'" in result.stderr
  assert "Flickr8k_text/Flickr8k.token.txt" in result.stderr
  assert "Traceback" not in result.stderr
  assert "[run] running the TFX pipeline" not in result.stdout
  assert not root.exists() and not (tmp_path / "out").exists()


def test_the_sample_is_never_generated_into_a_users_data_root(tmp_path):
  root = tmp_path / "my-data"
  root.mkdir()
  result = _captioner("run", "--config", _config(tmp_path, "local.yaml", root))
  assert result.returncode == 2
  assert "annotations/captions_train2017.json" in result.stderr
  assert "generating the sample" not in result.stdout
  assert _files(root) == []


def test_a_misspelt_image_folder_is_named(tmp_path):
  _flickr8k(tmp_path / "data", present=4, missing=0)
  config = config_lib.load(_config(
      tmp_path, "flickr8k.yaml", tmp_path / "data",
      "data: {train_images: Flickr8k_Dataset}"))
  with pytest.raises(feature_cache.MissingDataError,
                     match="train split: no image folder .*/Flickr8k_Dataset"):
    prepare.prepare_data(config)


def test_the_image_captioned_at_the_end_comes_from_the_readers(tmp_path):
  names, dev = _flickr8k(tmp_path / "flickr", present=6, missing=3)
  config = config_lib.load(_config(tmp_path, "flickr8k.yaml",
                                   tmp_path / "flickr"))
  path, references = outputs.first_eval_image(config, str(tmp_path / "flickr"))
  assert path.endswith(dev[1]) and dev[0] in names  # dev[0] is not on disk
  assert references == [f"A green picture number {names.index(dev[1])} ."] * 2

  coco = tmp_path / "coco"
  sample.generate(str(coco), num_images=10, seed=1)
  karpathy = _karpathy(coco)
  config = config_lib.load(_config(tmp_path, "coco2014-karpathy.yaml", coco))
  path, references = outputs.first_eval_image(config, str(coco))
  first_val = next(i for i in karpathy["images"] if i["split"] == "val"
                   and os.path.exists(coco / i["filepath"] / i["filename"]))
  assert path == str(coco / first_val["filepath"] / first_val["filename"])
  assert references == [s["raw"] for s in first_val["sentences"]]


def test_cache_features_refuses_an_image_folder_without_the_listed_images(
    tmp_path):
  _flickr8k(tmp_path / "data", present=4, missing=0)
  empty = tmp_path / "data" / "empty"
  empty.mkdir()
  out = tmp_path / "cache"
  common = ["cache-features", "--dataset", "flickr8k", "--annotations",
            str(tmp_path / "data/Flickr8k_text/Flickr8k.token.txt"),
            "--extractor", "patches", "--weights", "none", "--out", str(out),
            "--direct_running_mode=in_memory"]
  absent = _captioner(*common, "--images", str(tmp_path / "data/Flicker8k"))
  assert absent.returncode == 2
  assert f"no image folder {tmp_path}/data/Flicker8k" in absent.stderr
  none_there = _captioner(*common, "--images", str(empty))
  assert none_there.returncode == 2, none_there.stdout + none_there.stderr
  assert re.search(
      rf"train split: none of the 1 images that {tmp_path}/data/"
      rf"Flickr8k_text/Flickr8k.token.txt lists exists in the image folder "
      rf"{empty}; is that the right folder\?", none_there.stderr)
  # Not a usable cache: a rerun with the right folder is not refused.
  assert not (out / "summary.json").exists()


def _karpathy(coco, missing=0):
  """dataset_coco.json over the sample's images (COCO 2017 folders), its
  val split from the sample's eval images, plus `missing` listed images
  that are not on disk."""
  images = []
  for folder, split in (("train2017", "train"), ("val2017", "val")):
    with open(coco / "annotations" / f"captions_{folder}.json") as f:
      data = json.load(f)
    for k, image in enumerate(data["images"]):
      images.append({
          "filepath": folder, "filename": image["file_name"],
          "cocoid": image["id"],
          "split": "restval" if split == "train" and k % 4 == 0 else split,
          "sentences": [{"raw": a["caption"]} for a in data["annotations"]
                        if a["image_id"] == image["id"]]})
  for k in range(missing):
    images.append({"filepath": "val2014", "filename": f"gone_{k}.jpg",
                   "cocoid": 900000 + k, "split": ("train", "val")[k % 2],
                   "sentences": [{"raw": "a photo that is not there"}]})
  dataset = {"images": images, "dataset": "coco"}
  (coco / "dataset_coco.json").write_text(json.dumps(dataset))
  return dataset


def test_a_karpathy_folder_runs_end_to_end_with_float32_features(tmp_path):
  coco = tmp_path / "coco"
  sample.generate(str(coco), num_images=40, seed=5)
  _karpathy(coco, missing=6)
  before = _files(coco)
  config = _config(tmp_path, "coco2014-karpathy.yaml", coco, """
features: {extractor: patches, weights: none, dtype: float32}
model: {num_layers: 1, units: 32, num_heads: 1}
training: {epochs: 2, steps_per_epoch: 4, eval_steps: 1, batch_size: 16}
evaluation: {bleu4_threshold: 0.0}
beam: {args: ["--direct_running_mode=in_memory"]}
""")
  result = _captioner("run", "--config", config, timeout=1500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  out = result.stdout
  # The files the annotations name but the disk lacks, per split.
  assert "[run] examples [train]" in out and "3 missing_file" in out
  assert "dead_letters" in out
  assert "Caption: " in out and f"Image: {coco}/val2017/" in out
  assert _files(coco) == before  # nothing written into the data folder

  # Cached as float32, trained on them, served from them.
  examples, = glob.glob(str(tmp_path / "out/pipeline_root/"
                            "ImageCaptionExampleGen/examples/*/Split-eval"))
  record = next(iter(tf.data.TFRecordDataset(
      glob.glob(os.path.join(examples, "*.gz")), compression_type="GZIP")))
  example = tf.train.Example.FromString(record.numpy())
  feature = example.features.feature
  grid = list(feature["image_features_shape"].int64_list.value)
  raw = feature["image_features"].bytes_list.value[0]
  assert len(raw) == 4 * grid[0] * grid[1] * grid[2]  # 4 bytes a value
  model = tf.saved_model.load(client.latest_version_dir(str(tmp_path /
                                                            "out/serving")))
  from_examples = model.signatures["from_examples"](
      examples=tf.constant([record.numpy()]))["caption"].numpy()
  features = tf.reshape(tf.io.decode_raw(raw, tf.float32), [1, *grid])
  from_features = model.signatures["from_features"](
      image_features=features)["caption"].numpy()
  path = feature["image_path"].bytes_list.value[0].decode()
  served = model.signatures["serving_default"](image_bytes=tf.constant(
      [tf.io.gfile.GFile(path, "rb").read()]))["caption"].numpy()
  assert from_examples[0] == from_features[0] == served[0]
