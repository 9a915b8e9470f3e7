"""Corpus BLEU-1..4 of generated captions, as coco-caption computes it.

This is the one BLEU definition of the project. It is pure Python (sacrebleu
and numpy; no TensorFlow, TFMA or Beam), so `captioner bleu` starts fast;
the Evaluator's TFMA metric (`components.caption_metrics`) pools its
per-sentence statistics.

Definition (pycocoevalcap/bleu/bleu_scorer.py, option "closest"):
  * every hypothesis and reference is tokenized with `core.text.normalize`
    (the tokenization the model was trained on);
  * per sentence: clipped n-gram matches (a hypothesis n-gram counts at most
    as often as it occurs in the single reference that has it most often),
    hypothesis n-gram counts, hypothesis length, and the reference length
    closest to the hypothesis length (ties go to the shorter reference);
  * these statistics are summed over the corpus, and
      BLEU-n = BP * (p_1 * ... * p_n) ** (1 / n),  p_k = matches_k / total_k,
      BP = exp(1 - ref_len / hyp_len) if hyp_len < ref_len else 1;
  * no smoothing: a corpus without any matching n-gram scores 0 for BLEU-n.

The n-gram counting and the formula are sacrebleu's (`BLEU(tokenize="none",
smooth_method="none", effective_order=False)`), checked against coco-caption:
  * sacrebleu's `_get_closest_ref_len` picks the closest reference length
    with ties to the shorter one, exactly as coco-caption's
    `min((abs(l - testlen), l) for l in reflen)`.
  * `BLEU.corpus_score` takes reference *streams* (one list per reference
    position), so a varying number of references per hypothesis would need
    None-padding. We score each sentence on its own references instead (its
    `BLEUScore` carries the sentence's sufficient statistics: counts, totals,
    sys_len, ref_len), sum them, and compute the score with the public static
    `BLEU.compute_bleu`. This also gives the per-sentence statistics that the
    TFMA combiner pools.
  * sacrebleu computes BLEU for one maximum order; BLEU-n for n < 4 is
    `compute_bleu` on the first n counts with `max_ngram_order=n`, which is
    coco-caption's geometric mean of the first n precisions.
  * Known difference: coco-caption adds epsilons (1e-15 to matches, 1e-9 to
    totals and lengths), so where there is no n-gram match it reports a tiny
    positive BLEU-n (typically 1e-6..1e-4) and its brevity penalty differs
    by about 1e-9 relative. Here such a BLEU-n is exactly 0 (no smoothing);
    all other values agree to ~1e-9.
  * sacrebleu reports scores in percent; the functions here return [0, 1].

The second half of the module scores COCO-format files (`captioner bleu`):
BLEU as above plus coco-caption's CIDEr-D and ROUGE-L scorers, all on the
same tokenization.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Iterable, Sequence

from sacrebleu.metrics import BLEU

from core import text

MAX_ORDER = 4
ORDERS = tuple(range(1, MAX_ORDER + 1))


def metric_name(order: int) -> str:
  """Name of the BLEU-`order` metric, e.g. "bleu_4"."""
  return f"bleu_{order}"


@dataclasses.dataclass(frozen=True)
class BleuStatistics:
  """Sufficient statistics of corpus BLEU; pool sentences by adding them.

  Attributes:
    hypothesis_length: Number of hypothesis tokens.
    reference_length: Sum of the reference lengths closest to each hypothesis.
    matches: Clipped matching n-grams, for n = 1..MAX_ORDER.
    totals: Hypothesis n-grams, for n = 1..MAX_ORDER.
  """
  hypothesis_length: int = 0
  reference_length: int = 0
  matches: tuple = (0,) * MAX_ORDER
  totals: tuple = (0,) * MAX_ORDER

  def __add__(self, other: BleuStatistics) -> BleuStatistics:
    return BleuStatistics(
        hypothesis_length=self.hypothesis_length + other.hypothesis_length,
        reference_length=self.reference_length + other.reference_length,
        matches=tuple(a + b for a, b in zip(self.matches, other.matches)),
        totals=tuple(a + b for a, b in zip(self.totals, other.totals)))


def pool(statistics: Iterable[BleuStatistics]) -> BleuStatistics:
  """Sums per-sentence (or partial-corpus) statistics."""
  return sum(statistics, BleuStatistics())


@functools.lru_cache(maxsize=None)
def _sacrebleu() -> BLEU:
  # Input is already tokenized by `text.normalize`, hence tokenize="none";
  # force=True silences the "looks tokenized" warning that this implies.
  return BLEU(tokenize="none", smooth_method="none", effective_order=False,
              max_ngram_order=MAX_ORDER, force=True)


def tokenized(caption: str) -> str:
  """The caption as scored: training's tokens, joined by single spaces."""
  return " ".join(text.normalize(caption))


def sentence_statistics(hypothesis: str,
                        references: Sequence[str]) -> BleuStatistics:
  """BLEU statistics of one hypothesis against all its references."""
  if isinstance(references, str):
    raise TypeError("references must be a sequence of strings, not a string")
  if len(references) == 0:  # pylint: disable=g-explicit-length-test
    # coco-caption cannot score this either (closest length of nothing).
    raise ValueError(f"no reference captions for hypothesis {hypothesis!r}")
  score = _sacrebleu().corpus_score(
      [tokenized(hypothesis)], [[tokenized(r)] for r in references])
  return BleuStatistics(
      hypothesis_length=score.sys_len,
      reference_length=score.ref_len,
      matches=tuple(score.counts),
      totals=tuple(score.totals))


def bleu_from_statistics(statistics: BleuStatistics, order: int) -> float:
  """BLEU-`order` in [0, 1] from pooled statistics."""
  if order not in ORDERS:
    raise ValueError(f"BLEU order must be one of {ORDERS}, got {order}")
  score = BLEU.compute_bleu(
      correct=list(statistics.matches[:order]),
      total=list(statistics.totals[:order]),
      sys_len=statistics.hypothesis_length,
      ref_len=statistics.reference_length,
      smooth_method="none",
      effective_order=False,
      max_ngram_order=order)
  return float(score.score) / 100.0


def scores_from_statistics(statistics: BleuStatistics) -> dict:
  """{"bleu_1": .., ..., "bleu_4": ..} as plain floats."""
  return {metric_name(n): bleu_from_statistics(statistics, n) for n in ORDERS}


def corpus_statistics(hypotheses: Sequence[str],
                      references: Sequence[Sequence[str]]) -> BleuStatistics:
  """Pooled statistics; references[i] holds all references of hypotheses[i]."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} "
                     "reference lists")
  return pool(sentence_statistics(h, r) for h, r in zip(hypotheses, references))


def corpus_bleu(hypotheses: Sequence[str],
                references: Sequence[Sequence[str]]) -> dict:
  """coco-caption corpus BLEU-1..4 of `hypotheses`, as plain floats in [0, 1].

  Args:
    hypotheses: One generated caption per image.
    references: For each image, all its reference captions (any number >= 1).

  Returns:
    {"bleu_1": float, "bleu_2": float, "bleu_3": float, "bleu_4": float}
  """
  return scores_from_statistics(corpus_statistics(hypotheses, references))


# ---------------------------------------------------------------------------
# COCO files: references in the COCO captions format, hypotheses in the COCO
# results format [{"image_id": ..., "caption": ...}], as coco-caption reads
# them (one result per image).
# ---------------------------------------------------------------------------


class CaptionFileError(ValueError):
  """A references or results file that cannot be scored; says why."""


def _read_json(path: str, what: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise CaptionFileError(f"{what} file not found: {path}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise CaptionFileError(f"cannot read {what} file {path}: {e}") from None
  except json.JSONDecodeError as e:
    raise CaptionFileError(f"{path}: not valid JSON: {e}") from None


def _image_id_and_caption(entry, path: str, index: int) -> tuple:
  if not isinstance(entry, dict):
    raise CaptionFileError(
        f"{path}: entry #{index} is not an object with image_id and caption")
  image_id, caption = entry.get("image_id"), entry.get("caption")
  # Ids are compared as JSON gives them; COCO uses integers.
  if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
    raise CaptionFileError(
        f"{path}: entry #{index} has no integer or string image_id")
  if not isinstance(caption, str):
    raise CaptionFileError(f"{path}: entry #{index} has no string caption")
  return image_id, caption


def read_references(path: str) -> dict:
  """{image_id: [reference captions]} of a COCO captions file.

  Only images with at least one caption count: an entry of "images" without
  any caption in "annotations" cannot be scored and is ignored.
  """
  coco = _read_json(path, "annotations")
  if not isinstance(coco, dict) or not isinstance(
      coco.get("annotations"), list):
    raise CaptionFileError(
        f"{path}: not a COCO captions file (an object with an "
        "\"annotations\" list)")
  references = {}
  for index, entry in enumerate(coco["annotations"]):
    image_id, caption = _image_id_and_caption(entry, path, index)
    references.setdefault(image_id, []).append(caption)
  if not references:
    raise CaptionFileError(f"{path}: no annotations")
  return references


def read_results(path: str) -> dict:
  """{image_id: generated caption} of a COCO results file."""
  results = _read_json(path, "results")
  if not isinstance(results, list):
    raise CaptionFileError(
        f"{path}: not a COCO results file (a list of "
        "{\"image_id\": ..., \"caption\": ...})")
  hypotheses, duplicates = {}, []
  for index, entry in enumerate(results):
    image_id, caption = _image_id_and_caption(entry, path, index)
    if image_id in hypotheses and image_id not in duplicates:
      duplicates.append(image_id)
    hypotheses[image_id] = caption
  if duplicates:
    raise CaptionFileError(
        f"{path}: {len(duplicates)} image(s) have more than one result "
        f"(e.g. {_examples(duplicates)}); coco-caption scores one caption "
        "per image")
  if not hypotheses:
    raise CaptionFileError(f"{path}: no results")
  return hypotheses


def _examples(ids: Sequence, most: int = 5) -> str:
  shown = ", ".join(repr(i) for i in list(ids)[:most])
  return shown + (", ..." if len(ids) > most else "")


def pair_files(annotations_path: str, results_path: str,
               subset: bool = False) -> tuple:
  """(image ids, hypotheses, references) of the images to score, in order.

  Every result must name an annotated image. By default every annotated image
  must have a result, as in coco-caption's COCOEvalCap (which scores
  `coco.getImgIds()`); with `subset` only the images that have a result are
  scored, as coco-caption's example does with
  `params["image_id"] = coco_result.getImgIds()`.

  Raises:
    CaptionFileError: a file is missing or malformed, or they do not match.
  """
  references = read_references(annotations_path)
  hypotheses = read_results(results_path)
  unknown = [i for i in hypotheses if i not in references]
  if unknown:
    raise CaptionFileError(
        f"{len(unknown)} result(s) in {results_path} name image ids with no "
        f"reference caption in {annotations_path}: {_examples(unknown)}")
  missing = [i for i in references if i not in hypotheses]
  if missing and not subset:
    raise CaptionFileError(
        f"{len(missing)} of the {len(references)} annotated images have no "
        f"result in {results_path} (e.g. {_examples(missing)}); pass --subset "
        f"to score only the {len(hypotheses)} images that have one")
  image_ids = [i for i in references if i in hypotheses]
  return (image_ids, [hypotheses[i] for i in image_ids],
          [references[i] for i in image_ids])


def caption_scores(hypotheses: Sequence[str],
                   references: Sequence[Sequence[str]]) -> dict:
  """Corpus BLEU-1..4, CIDEr-D and ROUGE-L, as plain floats.

  CIDEr-D and ROUGE-L are coco-caption's own scorers (pycocoevalcap's Cider,
  which is CIDEr-D: clipped counts, length penalty, x10; and Rouge, beta 1.2)
  on `tokenized` text, not on its PTBTokenizer (which needs Java). CIDEr-D's
  document frequencies come from the scored references, so it depends on
  which images are scored, unlike BLEU's pooled counts.
  """
  # Imported here: the Evaluator imports this module on workers that need
  # only BLEU and may not have pycocoevalcap.
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.rouge.rouge import Rouge  # pylint: disable=g-import-not-at-top
  scores = corpus_bleu(hypotheses, references)
  if not hypotheses:
    return {**scores, "cider_d": 0.0, "rouge_l": 0.0}
  res = {i: [tokenized(h)] for i, h in enumerate(hypotheses)}
  gts = {i: [tokenized(r) for r in refs] for i, refs in enumerate(references)}
  scores["cider_d"] = float(Cider().compute_score(gts, res)[0])
  scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
  return scores
