"""The project's caption metrics: coco-caption's BLEU-1..4, CIDEr-D, ROUGE-L.

This is the one definition of every caption score the project reports: the
Evaluator's TFMA metrics (`components.caption_metrics`), report.html and
`captioner bleu` all compute them here. It is pure Python (sacrebleu and
the pure-Python `core.coco_metrics` and `core.ptb_tokenizer`; no TensorFlow,
TFMA, Beam, Java or pycocoevalcap), so `captioner bleu` starts fast.

Tokenization, as coco-caption's (pycocoevalcap/tokenizer/ptbtokenizer.py):
every hypothesis and reference is tokenized by `tokenize`, i.e.
`core.ptb_tokenizer.ptb_tokenize`: the Stanford PTBTokenizer rules
(``-preserveLines -lowerCase``), then coco-caption's punctuation tokens
removed ("close-up" stays one token, "dog's" is "dog 's", "can't" is
"ca n't"). `pretokenized=True` is for text that is already tokenized: it is
only split on whitespace. The training vocabulary keeps its own
normalization (`core.text`); scores do not use it.

BLEU (pycocoevalcap/bleu/bleu_scorer.py, option "closest"):
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

CIDEr-D and ROUGE-L are `core.coco_metrics` (pycocoevalcap's Cider and
Rouge, line by line: CIDEr-D with n = 1..4, sigma 6, the length penalty,
clipping and x10; ROUGE-L with beta 1.2). CIDEr-D's document frequencies
come from the references of the images scored together (the eval split, or
the COCO file), so unlike BLEU it is not a sum of per-image figures.
`CaptionStatistics` holds everything the six metrics need and merges, for
the TFMA combiner and for `caption_scores` alike.

The second half of the module reads COCO-format files (`captioner bleu`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
from typing import Iterable, List, Optional, Sequence, Tuple

from sacrebleu.metrics import BLEU

from core import coco_metrics
from core import ptb_tokenizer

MAX_ORDER = 4
ORDERS = tuple(range(1, MAX_ORDER + 1))
# Names of the metrics, as TFMA, report.html and `captioner bleu --json` key
# them (core/config.py's GATE_METRICS are two of these).
CIDER_D = "cider_d"
ROUGE_L = "rouge_l"


def metric_name(order: int) -> str:
  """Name of the BLEU-`order` metric, e.g. "bleu_4"."""
  return f"bleu_{order}"


METRIC_NAMES = tuple(metric_name(n) for n in ORDERS) + (CIDER_D, ROUGE_L)


@functools.lru_cache(maxsize=1 << 16)
def _ptb_tokenize(caption: str) -> str:
  # Cached: the Evaluator tokenizes each reference once per model evaluated.
  return ptb_tokenizer.ptb_tokenize(caption)


def tokenize(caption: str, pretokenized: bool = False) -> str:
  """The caption as scored: coco-caption's PTB tokens, joined by spaces.

  With `pretokenized` the caption is taken as already tokenized (e.g. a
  model's decoded words): only whitespace is normalised.
  """
  if pretokenized:
    return ptb_tokenizer.ptb_tokenize(caption, pretokenized=True)
  return _ptb_tokenize(caption)


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
  # Input is already tokenized by `tokenize`, hence tokenize="none";
  # force=True silences the "looks tokenized" warning that this implies.
  return BLEU(tokenize="none", smooth_method="none", effective_order=False,
              max_ngram_order=MAX_ORDER, force=True)


def _check_references(hypothesis: str, references: Sequence[str]) -> None:
  if isinstance(references, str):
    raise TypeError("references must be a sequence of strings, not a string")
  if len(references) == 0:  # pylint: disable=g-explicit-length-test
    # coco-caption cannot score this either (closest length of nothing).
    raise ValueError(f"no reference captions for hypothesis {hypothesis!r}")


def sentence_statistics(hypothesis: str, references: Sequence[str],
                        pretokenized: bool = False) -> BleuStatistics:
  """BLEU statistics of one hypothesis against all its references."""
  _check_references(hypothesis, references)
  return _tokenized_statistics(
      tokenize(hypothesis, pretokenized),
      [tokenize(r, pretokenized) for r in references])


def _tokenized_statistics(hypothesis: str,
                          references: Sequence[str]) -> BleuStatistics:
  score = _sacrebleu().corpus_score([hypothesis], [[r] for r in references])
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


def _check_lengths(hypotheses: Sequence[str],
                   references: Sequence[Sequence[str]]) -> None:
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} "
                     "reference lists")


def corpus_statistics(hypotheses: Sequence[str],
                      references: Sequence[Sequence[str]],
                      pretokenized: bool = False) -> BleuStatistics:
  """Pooled statistics; references[i] holds all references of hypotheses[i]."""
  _check_lengths(hypotheses, references)
  return pool(sentence_statistics(h, r, pretokenized)
              for h, r in zip(hypotheses, references))


def corpus_bleu(hypotheses: Sequence[str],
                references: Sequence[Sequence[str]],
                pretokenized: bool = False) -> dict:
  """coco-caption corpus BLEU-1..4 of `hypotheses`, as plain floats in [0, 1].

  Args:
    hypotheses: One generated caption per image.
    references: For each image, all its reference captions (any number >= 1).
    pretokenized: The captions are already tokenized (see `tokenize`).

  Returns:
    {"bleu_1": float, "bleu_2": float, "bleu_3": float, "bleu_4": float}
  """
  return scores_from_statistics(
      corpus_statistics(hypotheses, references, pretokenized))


# ---------------------------------------------------------------------------
# All six metrics: BLEU-1..4, CIDEr-D, ROUGE-L.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class CaptionStatistics:
  """Mergeable state of all six corpus metrics over a set of images.

  Attributes:
    bleu: The pooled BLEU statistics.
    captions: Per image, (tokenized hypothesis, tokenized references). CIDEr-D
      needs the document frequencies of *all* the images' references before
      it can score any one image, so the tokenized captions are kept (a few
      hundred bytes an image) and CIDEr-D and ROUGE-L are computed by
      `scores()`, on the images added or merged in.
  """
  bleu: BleuStatistics = BleuStatistics()
  captions: List[Tuple[str, Tuple[str, ...]]] = dataclasses.field(
      default_factory=list)

  def add(self, hypothesis: str, references: Sequence[str],
          pretokenized: bool = False) -> "CaptionStatistics":
    """Adds one image (in place) and returns self."""
    _check_references(hypothesis, references)
    hypothesis = tokenize(hypothesis, pretokenized)
    references = tuple(tokenize(r, pretokenized) for r in references)
    self.bleu = self.bleu + _tokenized_statistics(hypothesis, references)
    self.captions.append((hypothesis, references))
    return self

  def merge(self, other: "CaptionStatistics") -> "CaptionStatistics":
    """Adds `other`'s images into self (in place) and returns self."""
    self.bleu = self.bleu + other.bleu
    self.captions.extend(other.captions)
    return self

  def __eq__(self, other) -> bool:
    # A set of images: the order they were added or merged in is no part
    # of it.
    if not isinstance(other, CaptionStatistics):
      return NotImplemented
    return self.bleu == other.bleu and collections.Counter(
        self.captions) == collections.Counter(other.captions)

  def cider_d(self) -> float:
    """Corpus CIDEr-D, document frequencies from these images' references
    (0.0 for no images)."""
    if not self.captions:
      return 0.0
    hypotheses, references = self._by_index()
    return float(coco_metrics.cider_d(hypotheses, references)[0])

  def rouge_l(self) -> float:
    """Corpus ROUGE-L, the mean of the images' ROUGE-L (0.0 for none)."""
    if not self.captions:
      return 0.0
    hypotheses, references = self._by_index()
    return float(coco_metrics.rouge_l(hypotheses, references)[0])

  def scores(self) -> dict:
    """{"bleu_1": .., .., "bleu_4": .., "cider_d": .., "rouge_l": ..}."""
    return {**scores_from_statistics(self.bleu), CIDER_D: self.cider_d(),
            ROUGE_L: self.rouge_l()}

  def _by_index(self):
    return ({i: h for i, (h, _) in enumerate(self.captions)},
            {i: list(r) for i, (_, r) in enumerate(self.captions)})


def caption_scores(hypotheses: Sequence[str],
                   references: Sequence[Sequence[str]],
                   pretokenized: bool = False) -> dict:
  """Corpus BLEU-1..4, CIDEr-D and ROUGE-L, as plain floats.

  CIDEr-D's document frequencies come from the scored references, so it
  depends on which images are scored, unlike BLEU's pooled counts.
  """
  _check_lengths(hypotheses, references)
  statistics = CaptionStatistics()
  for hypothesis, refs in zip(hypotheses, references):
    statistics.add(hypothesis, refs, pretokenized)
  return statistics.scores()


def document_frequency(references: Iterable[Sequence[str]],
                       pretokenized: bool = False,
                       ) -> coco_metrics.DocumentFrequency:
  """CIDEr-D's document frequencies over these images' references (one
  sequence of references per image), to score images of that split alone."""
  df = coco_metrics.DocumentFrequency()
  for refs in references:
    df.add_image(coco_metrics.ngram_counts(tokenize(r, pretokenized))
                 for r in refs)
  return df


def image_scores(hypothesis: str, references: Sequence[str],
                 document_frequency: Optional[
                     coco_metrics.DocumentFrequency] = None,
                 pretokenized: bool = False) -> dict:
  """One image's own BLEU-1..4 and ROUGE-L, and its CIDEr-D against
  `document_frequency` (its split's; without it, CIDEr-D is left out).

  The corpus CIDEr-D and ROUGE-L are the means of these per-image figures
  (with the split's document frequencies); corpus BLEU is not.
  """
  _check_references(hypothesis, references)
  hypothesis = tokenize(hypothesis, pretokenized)
  references = [tokenize(r, pretokenized) for r in references]
  scores = scores_from_statistics(_tokenized_statistics(hypothesis,
                                                        references))
  if document_frequency is not None:
    scores[CIDER_D] = coco_metrics.cider_d_image_score(
        coco_metrics.CiderImageStats.from_captions(hypothesis, references),
        document_frequency)
  scores[ROUGE_L] = coco_metrics.rouge_l_image_score(hypothesis, references)
  return scores


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
