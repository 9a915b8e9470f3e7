"""Dataset readers: annotation files -> one record per image.

Every reader yields plain dicts (picklable, JSON-able):

  image_id   int     COCO's id; for Flickr8k a stable hash of the file name
  file_name  str     as the dataset names it
  path       str     where the image is (local or gs://)
  captions   [str]   the usable reference captions
  dropped    [[reason, caption index]]  captions that were not usable
  problem    str     set when the image itself must be skipped (see below)

Supported layouts (`Source.dataset`):
  coco2017   captions_{train,val}2017.json, images `%012d.jpg`
  coco2014   captions_{train,val}2014.json, images `COCO_<split>2014_%012d.jpg`
  coco       any folder of images with a COCO-format captions file
  flickr8k   Flickr8k.token.txt (`name.jpg#k<TAB>caption`); the split is a
             list file such as Flickr_8k.trainImages.txt
  karpathy   dataset_coco.json / dataset_flickr8k.json (`images[].split`)

Which images a source yields (`Source.subset`): all ("") ; for karpathy the
split names joined by "+" ("train+restval"); for flickr8k the split list
file; for any dataset "hash:A-B", the images whose id hashes into buckets
[A, B) of 100 (a deterministic split for datasets that have none).

Files are read with Beam's FileSystems, so local paths and gs:// work alike.
Bytes that are not UTF-8 never stop a reader: they are decoded with
surrogate escapes and the caption that holds them is dropped.
"""

import collections
import dataclasses
import hashlib
import json
import os
import posixpath
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

DATASETS = ("coco2017", "coco2014", "coco", "flickr8k", "karpathy")

# Why an image is skipped (each also names a Beam counter).
DUPLICATE_IMAGE_ID = "duplicate_image_id"
NO_CAPTIONS = "no_captions"
# Why a caption is dropped (the image goes on with its other captions).
EMPTY_CAPTION = "empty_caption"
INVALID_UTF8_CAPTION = "invalid_utf8_caption"
MALFORMED_LINE = "malformed_line"

HASH_BUCKETS = 100


@dataclasses.dataclass(frozen=True)
class Source:
  dataset: str        # one of DATASETS
  annotations: str    # the captions file
  images: str         # the image folder
  subset: str = ""    # which images (see the module docstring)

  def __post_init__(self):
    if self.dataset not in DATASETS:
      raise ValueError(f"unknown dataset {self.dataset!r}; choose one of: "
                       f"{', '.join(DATASETS)}")


def read_bytes(path: str) -> bytes:
  """A whole file, local or gs://, never decompressed by its suffix."""
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED
                        ) as f:
    return f.read()


def _text(path: str) -> str:
  return read_bytes(path).decode("utf-8", errors="surrogateescape")


def join(folder: str, name: str) -> str:
  """`name` under `folder` (local or any Beam filesystem); an absolute path
  or URL stays itself, and "" or "." is the folder."""
  if not folder:
    return name
  if name in ("", "."):
    return folder
  if "://" in name or posixpath.isabs(name) or os.path.isabs(name):
    return name
  return FileSystems.join(folder, name)


def _sha256_64(text: str) -> int:
  """The first 64 bits of sha256(text): stable across runs and machines,
  unlike Python's hash()."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8],
                        "big")


def stable_id(file_name: str) -> int:
  """A positive int64 id for datasets that have none (Flickr8k)."""
  return _sha256_64(file_name) & 0x7FFF_FFFF_FFFF_FFFF


def id_hash(image_id: int) -> int:
  """The hash every per-image choice uses: `hash:` subsets and shards."""
  return _sha256_64(str(image_id))


def hash_bucket(image_id: int) -> int:
  # The top 32 bits, as `hash:` subsets have always been drawn.
  return (id_hash(image_id) >> 32) % HASH_BUCKETS


def _record(image_id: int, file_name: str, path: str,
            captions: Iterable[Any]) -> Dict[str, Any]:
  usable, dropped = [], []
  for index, caption in enumerate(captions):
    if not isinstance(caption, str) or not caption.strip():
      dropped.append([EMPTY_CAPTION, index])
      continue
    try:
      caption.encode("utf-8")
    except UnicodeEncodeError:  # surrogates: bytes that were not UTF-8
      dropped.append([INVALID_UTF8_CAPTION, index])
      continue
    usable.append(" ".join(caption.split()))
  record = {"image_id": int(image_id), "file_name": file_name, "path": path,
            "captions": usable, "dropped": dropped, "problem": ""}
  if not usable:
    record["problem"] = NO_CAPTIONS
  return record


# ----------------------------------------------------------------------------
# The layouts.


def _coco_file_name(dataset: str, annotations: str, image: Dict[str, Any]
                    ) -> str:
  if image.get("file_name"):
    return image["file_name"]
  if dataset == "coco2017":
    return "%012d.jpg" % image["id"]
  if dataset == "coco2014":
    match = re.search(r"(train|val|test)2014", posixpath.basename(annotations))
    if match:
      return f"COCO_{match.group(0)}_%012d.jpg" % image["id"]
  raise ValueError(f"{annotations}: image {image.get('id')} has no file_name")


def _coco(source: Source) -> Iterator[Dict[str, Any]]:
  coco = json.loads(_text(source.annotations))
  captions = collections.defaultdict(list)
  for annotation in coco.get("annotations", []):
    captions[annotation["image_id"]].append(annotation.get("caption"))
  for image in coco["images"]:
    file_name = _coco_file_name(source.dataset, source.annotations, image)
    yield _record(image["id"], file_name, join(source.images, file_name),
                  captions.get(image["id"], []))


def _flickr8k(source: Source) -> Iterator[Dict[str, Any]]:
  captions = collections.defaultdict(list)
  order = []
  malformed = []
  for number, line in enumerate(_text(source.annotations).splitlines(), 1):
    if not line.strip():
      continue
    name, tab, caption = line.partition("\t")
    file_name, hash_sign, _ = name.partition("#")
    if not tab or not hash_sign or not file_name:
      malformed.append(number)
      continue
    if file_name not in captions:
      order.append(file_name)
    captions[file_name].append(caption)
  selected = order
  if source.subset and not source.subset.startswith("hash:"):
    selected = [line.strip() for line in _text(source.subset).splitlines()
                if line.strip()]
  for file_name in selected:
    record = _record(stable_id(file_name), file_name,
                     join(source.images, file_name), captions.get(file_name, []))
    yield record
  if malformed:
    # Reported once, as a caption-level problem of no particular image.
    yield {"image_id": -1, "file_name": "", "path": source.annotations,
           "captions": [], "problem": "",
           "dropped": [[MALFORMED_LINE, n] for n in malformed]}


def _karpathy(source: Source) -> Iterator[Dict[str, Any]]:
  dataset = json.loads(_text(source.annotations))
  wanted = None
  if source.subset and not source.subset.startswith("hash:"):
    wanted = set(source.subset.split("+"))
  for image in dataset["images"]:
    if wanted is not None and image.get("split") not in wanted:
      continue
    file_name = image["filename"]
    relative = (posixpath.join(image["filepath"], file_name)
                if image.get("filepath") else file_name)
    # COCO entries carry COCO's id, so results files match the annotations.
    image_id = image.get("cocoid", stable_id(file_name))
    yield _record(image_id, file_name, join(source.images, relative),
                  [sentence.get("raw") for sentence in image["sentences"]])


def _hash_range(subset: str):
  try:
    low, high = (int(x) for x in subset[len("hash:"):].split("-"))
  except ValueError:
    raise ValueError(f"subset {subset!r}: write hash:LOW-HIGH with buckets "
                     f"0..{HASH_BUCKETS}, e.g. hash:0-90") from None
  if not 0 <= low < high <= HASH_BUCKETS:
    raise ValueError(f"subset {subset!r}: need 0 <= LOW < HIGH <= "
                     f"{HASH_BUCKETS}")
  return low, high


def read(source: Source) -> Iterator[Dict[str, Any]]:
  """The records of a source, duplicates marked, in file order."""
  reader = {"coco2017": _coco, "coco2014": _coco, "coco": _coco,
            "flickr8k": _flickr8k, "karpathy": _karpathy}[source.dataset]
  hash_range = (_hash_range(source.subset)
                if source.subset.startswith("hash:") else None)
  first_path: Dict[int, str] = {}
  for record in reader(source):
    if record["image_id"] < 0:  # file-level notes (malformed lines)
      yield record
      continue
    if hash_range and not (
        hash_range[0] <= hash_bucket(record["image_id"]) < hash_range[1]):
      continue
    if record["image_id"] in first_path:
      record["problem"] = DUPLICATE_IMAGE_ID
      record["detail"] = f"first listed as {first_path[record['image_id']]}"
    else:
      first_path[record["image_id"]] = record["path"]
    yield record


def image_files(pattern: str) -> Iterator[Dict[str, Any]]:
  """Records of image files without annotations: every file directly in a
  folder, or every file a glob matches (local or gs://), sorted by path.

  The id is `stable_id(file name)` (as for Flickr8k, so a folder of
  Flickr8k images gets Flickr8k's ids); captions are empty and no image is
  skipped for lacking them. Two files with the same name are one id: the
  second is marked DUPLICATE_IMAGE_ID, as `read` marks repeated ids.
  """
  is_glob = any(c in pattern for c in "*?[")
  match = FileSystems.match([pattern if is_glob else join(pattern, "*")])[0]
  paths = sorted(m.path for m in match.metadata_list
                 if not m.path.endswith("/") and
                 ("://" in m.path or os.path.isfile(m.path)))
  if not paths:
    raise FileNotFoundError(
        f"--images {pattern}: no files " + ("match it" if is_glob else
                                            "in that folder"))
  first_path: Dict[int, str] = {}
  for path in paths:
    file_name = posixpath.basename(path)
    record = {"image_id": stable_id(file_name), "file_name": file_name,
              "path": path, "captions": [], "dropped": [], "problem": ""}
    if record["image_id"] in first_path:
      record["problem"] = DUPLICATE_IMAGE_ID
      record["detail"] = f"first listed as {first_path[record['image_id']]}"
    else:
      first_path[record["image_id"]] = path
    yield record


def count_images(source: Source) -> int:
  return sum(1 for r in read(source) if r["image_id"] >= 0)


# ----------------------------------------------------------------------------
# Splits a whole dataset defines (for `captioner cache-features`).


FLICKR8K_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt",
                        "dev": "Flickr_8k.devImages.txt",
                        "test": "Flickr_8k.testImages.txt"}


def dataset_splits(dataset: str, annotations: List[str], images: List[str],
                   split_names: Optional[List[str]] = None
                   ) -> Dict[str, Source]:
  """Split name -> Source for every split the files define.

  COCO: one split per annotations file (named after it: captions_val2014.json
  -> val2014), each with its image folder. Flickr8k: train/dev/test from the
  split list files beside the token file. Karpathy: the splits in the file.
  """
  if len(images) == 1 and len(annotations) > 1:
    images = images * len(annotations)
  if len(images) != len(annotations):
    raise ValueError("give one --images folder, or one per --annotations file")
  if dataset in ("coco2017", "coco2014", "coco"):
    names = split_names or [_coco_split_name(a) for a in annotations]
    if len(names) != len(annotations) or len(set(names)) != len(names):
      raise ValueError(f"split names {names} do not name each annotations "
                       "file once; give --split-names")
    return {name: Source(dataset, a, i)
            for name, a, i in zip(names, annotations, images)}
  if len(annotations) != 1:
    raise ValueError(f"{dataset} takes one annotations file")
  annotations_file, images_dir = annotations[0], images[0]
  if dataset == "flickr8k":
    folder = posixpath.dirname(annotations_file)
    splits = {}
    for name, list_file in FLICKR8K_SPLIT_FILES.items():
      path = join(folder, list_file)
      if FileSystems.exists(path):
        splits[name] = Source(dataset, annotations_file, images_dir, path)
    if not splits:
      raise FileNotFoundError(
          f"no Flickr_8k.*Images.txt split files beside {annotations_file}")
    return splits
  names = sorted({image.get("split", "train") for image in
                  json.loads(_text(annotations_file))["images"]})
  return {name: Source(dataset, annotations_file, images_dir, name)
          for name in names}


def _coco_split_name(annotations: str) -> str:
  stem = posixpath.basename(annotations).rsplit(".", 1)[0]
  return stem[len("captions_"):] if stem.startswith("captions_") else stem
