"""Tests for ingest/readers.py: every dataset layout, subsets, bad rows."""

import json
import os

import pytest

from ingest import readers


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  mode = "wb" if isinstance(data, bytes) else "w"
  with open(path, mode) as f:
    f.write(data)
  return str(path)


def _coco(tmp_path, name, images, captions):
  return _write(os.path.join(tmp_path, "annotations", name), json.dumps({
      "images": images,
      "annotations": [{"id": n, "image_id": i, "caption": c}
                      for n, (i, c) in enumerate(captions)]}))


def test_coco2014_names_files_by_split_when_the_file_name_is_missing(tmp_path):
  path = _coco(tmp_path, "captions_val2014.json",
               [{"id": 42}, {"id": 7, "file_name": "given.jpg"}],
               [(42, "A dog."), (42, "  two   spaces "), (7, "x")])
  records = list(readers.read(readers.Source("coco2014", path, "/img")))
  assert [r["file_name"] for r in records] == [
      "COCO_val2014_000000000042.jpg", "given.jpg"]
  assert records[0]["path"] == "/img/COCO_val2014_000000000042.jpg"
  assert records[0]["captions"] == ["A dog.", "two spaces"]


def test_coco2017_names_files_by_id(tmp_path):
  path = _coco(tmp_path, "captions_train2017.json", [{"id": 9}], [(9, "a")])
  (record,) = readers.read(readers.Source("coco2017", path, "gs://b/train"))
  assert record["path"] == "gs://b/train/000000000009.jpg"


def test_flickr8k_reads_the_token_file_and_a_split_list(tmp_path):
  tokens = _write(tmp_path / "Flickr8k.token.txt", (
      "1000_a.jpg#0\tA child in pink .\n1000_a.jpg#1\tA girl .\n"
      "2000_b.jpg#0\tA dog runs .\nbroken line without a tab\n"
      "3000_c.jpg#0\tUnused .\n"))
  train = _write(tmp_path / "Flickr_8k.trainImages.txt",
                 "2000_b.jpg\n1000_a.jpg\n4000_d.jpg\n")
  records = list(readers.read(readers.Source(
      "flickr8k", tokens, str(tmp_path / "images"), train)))
  by_name = {r["file_name"]: r for r in records if r["image_id"] >= 0}
  assert list(by_name) == ["2000_b.jpg", "1000_a.jpg", "4000_d.jpg"]
  assert by_name["1000_a.jpg"]["captions"] == ["A child in pink .", "A girl ."]
  assert by_name["4000_d.jpg"]["problem"] == readers.NO_CAPTIONS
  assert by_name["2000_b.jpg"]["image_id"] == readers.stable_id("2000_b.jpg")
  (note,) = [r for r in records if r["image_id"] < 0]
  assert note["dropped"] == [[readers.MALFORMED_LINE, 4]]
  splits = readers.dataset_splits("flickr8k", [tokens], [str(tmp_path)])
  assert list(splits) == ["train"] and splits["train"].subset == train


def test_karpathy_selects_splits_and_joins_filepath(tmp_path):
  path = _write(tmp_path / "dataset_coco.json", json.dumps({"images": [
      {"filepath": "val2014", "filename": "COCO_val2014_1.jpg", "cocoid": 1,
       "split": "restval", "sentences": [{"raw": "A cat."}]},
      {"filepath": "val2014", "filename": "COCO_val2014_2.jpg", "cocoid": 2,
       "split": "test", "sentences": [{"raw": "A dog."}]},
      {"filepath": "train2014", "filename": "COCO_train2014_3.jpg",
       "cocoid": 3, "split": "train", "sentences": [{"raw": "A cow."}]},
  ]}))
  train = list(readers.read(readers.Source("karpathy", path, "/coco",
                                           "train+restval")))
  assert [(r["image_id"], r["path"]) for r in train] == [
      (1, "/coco/val2014/COCO_val2014_1.jpg"),
      (3, "/coco/train2014/COCO_train2014_3.jpg")]
  assert list(readers.dataset_splits("karpathy", [path], ["/coco"])) == [
      "restval", "test", "train"]


def test_hash_subsets_split_deterministically_and_completely(tmp_path):
  path = _coco(tmp_path, "captions.json", [{"id": i, "file_name": f"{i}.jpg"}
                                           for i in range(200)],
               [(i, "x") for i in range(200)])
  ids = lambda subset: {r["image_id"] for r in readers.read(
      readers.Source("coco", path, "", subset))}
  train, held_out = ids("hash:0-80"), ids("hash:80-100")
  assert not train & held_out and len(train | held_out) == 200
  assert 120 < len(train) < 200 and train == ids("hash:0-80")
  with pytest.raises(ValueError, match="hash:LOW-HIGH"):
    ids("hash:x")


def test_bad_rows_are_marked_not_raised(tmp_path):
  text = json.dumps({"images": [{"id": 1, "file_name": "a.jpg"},
                                {"id": 1, "file_name": "b.jpg"},
                                {"id": 2, "file_name": "c.jpg"}],
                     "annotations": [
                         {"image_id": 1, "caption": "fine"},
                         {"image_id": 1, "caption": " "},
                         {"image_id": 1, "caption": None},
                         {"image_id": 2, "caption": "\udc80bad"}]},
                    ensure_ascii=False)
  path = _write(tmp_path / "c.json",
                text.encode("utf-8", errors="surrogateescape"))
  first, duplicate, bad = readers.read(readers.Source("coco", path, ""))
  assert first["captions"] == ["fine"] and first["problem"] == ""
  assert first["dropped"] == [[readers.EMPTY_CAPTION, 1],
                              [readers.EMPTY_CAPTION, 2]]
  assert duplicate["problem"] == readers.DUPLICATE_IMAGE_ID
  assert "a.jpg" in duplicate["detail"]
  assert bad["problem"] == readers.NO_CAPTIONS
  assert bad["dropped"] == [[readers.INVALID_UTF8_CAPTION, 0]]


def test_unknown_dataset_names_the_choices():
  with pytest.raises(ValueError, match="coco2014.*karpathy"):
    readers.Source("imagenet", "", "")
