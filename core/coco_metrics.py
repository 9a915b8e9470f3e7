"""CIDEr-D and ROUGE-L exactly as coco-caption (pycocoevalcap 1.2) defines them.

The definitions are mirrored line by line from
``pycocoevalcap/cider/cider_scorer.py`` (Vedantam et al., CIDEr-D as used by
the MS COCO caption server) and ``pycocoevalcap/rouge/rouge.py`` (ROUGE-L,
Lin 2004, with beta 1.2), so scores agree with theirs to float rounding.
Inputs are captions that are already tokenized (space-separated tokens, e.g.
the output of :func:`core.ptb_tokenizer.ptb_tokenize`), the same as
pycocoevalcap's scorers take after its PTBTokenizer.

Everything is split into statistics that can be computed per image and
merged, so that a TFMA combiner (or any map/reduce) can accumulate them:

* :class:`CiderImageStats` -- n-gram counts of one image's hypothesis and
  references (independent of every other image);
* :class:`DocumentFrequency` -- for each n-gram, the number of images whose
  references contain it, plus the number of images.  CIDEr-D's idf comes from
  the evaluated split's references, so this must cover *all* images scored;
* :class:`CiderAccumulator` / :class:`RougeAccumulator` -- keyed by image id,
  mergeable, with ``result()`` giving ``(corpus score, per-image scores)``.

Quirks of pycocoevalcap that are reproduced on purpose (changing them would
change the numbers):

* CIDEr-D's Gaussian length penalty uses the *bigram* counts as lengths
  (``if n == 1: length += term_freq`` in ``counts2vec``); for non-empty
  captions that equals word count - 1, so only the empty caption differs.
* CIDEr splits on any whitespace (``str.split()``), ROUGE-L splits on single
  spaces (``str.split(" ")``), so the empty caption is one empty token for
  ROUGE-L and double spaces make empty tokens.
* idf is ``log(N) - log(max(1, df))`` with N the number of images scored.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Dict, Hashable, Iterable, Mapping, Optional, Sequence, Tuple

# coco-caption's constants.
CIDER_MAX_NGRAM = 4
CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2

Ngram = Tuple[str, ...]
NgramCounts = Dict[Ngram, int]
ImageId = Hashable


# ---------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------


def ngram_counts(caption: str, max_n: int = CIDER_MAX_NGRAM) -> NgramCounts:
  """All 1..max_n-gram counts of a tokenized caption (cider_scorer.precook)."""
  words = caption.split()
  counts: NgramCounts = collections.Counter()
  for k in range(1, max_n + 1):
    for i in range(len(words) - k + 1):
      counts[tuple(words[i:i + k])] += 1
  return counts


@dataclasses.dataclass
class CiderImageStats:
  """One image's n-gram counts: its hypothesis and each of its references."""
  hypothesis: NgramCounts
  references: Tuple[NgramCounts, ...]

  @classmethod
  def from_captions(cls, hypothesis: str, references: Sequence[str],
                    max_n: int = CIDER_MAX_NGRAM) -> "CiderImageStats":
    if isinstance(references, str):
      raise TypeError("references must be a sequence of captions, not a str")
    if not references:
      raise ValueError("CIDEr-D needs at least one reference per image")
    return cls(hypothesis=ngram_counts(hypothesis, max_n),
               references=tuple(ngram_counts(r, max_n) for r in references))


@dataclasses.dataclass
class DocumentFrequency:
  """Per n-gram, how many images have it in at least one reference.

  ``num_images`` is N in idf = log(N) - log(max(1, df)); pycocoevalcap takes
  it as the number of images scored (``ref_len = log(len(crefs))``).
  """
  counts: Dict[Ngram, int] = dataclasses.field(
      default_factory=collections.Counter)
  num_images: int = 0

  def add_image(self, references: Iterable[NgramCounts]) -> None:
    # An n-gram counts once per image however many references contain it
    # (cider_scorer.compute_doc_freq).
    for ngram in set(ng for ref in references for ng in ref):
      self.counts[ngram] += 1
    self.num_images += 1

  def merge(self, other: "DocumentFrequency") -> "DocumentFrequency":
    """Adds ``other`` into self (in place) and returns self."""
    for ngram, count in other.counts.items():
      self.counts[ngram] = self.counts.get(ngram, 0) + count
    self.num_images += other.num_images
    return self


def document_frequency(
    image_stats: Iterable[CiderImageStats]) -> DocumentFrequency:
  """Document frequencies over the references of the given images."""
  df = DocumentFrequency()
  for stats in image_stats:
    df.add_image(stats.references)
  return df


def _tfidf_vector(counts: NgramCounts, df: DocumentFrequency, log_n: float,
                  max_n: int):
  """cider_scorer.counts2vec: tf-idf per n-gram order, norms, 'length'."""
  vec = [dict() for _ in range(max_n)]
  norm = [0.0] * max_n
  length = 0
  for ngram, term_freq in counts.items():
    n = len(ngram) - 1
    # Unseen n-grams get df 1 (log 1 = 0), i.e. the maximum idf.
    idf = log_n - math.log(max(1.0, float(df.counts.get(ngram, 0))))
    weight = float(term_freq) * idf
    vec[n][ngram] = weight
    norm[n] += weight ** 2
    if n == 1:  # pycocoevalcap's length is the bigram count, kept as is.
      length += term_freq
  return vec, [math.sqrt(x) for x in norm], length


def _similarity(vec_hyp, vec_ref, norm_hyp, norm_ref, length_hyp, length_ref,
                sigma: float, max_n: int):
  """cider_scorer.sim: clipped cosine per order times the length penalty."""
  delta = float(length_hyp - length_ref)
  penalty = math.e ** (-(delta ** 2) / (2 * sigma ** 2))
  val = [0.0] * max_n
  for n in range(max_n):
    ref_n = vec_ref[n]
    for ngram, weight in vec_hyp[n].items():
      ref_weight = ref_n.get(ngram, 0.0)
      # CIDEr-D clips the hypothesis weight by the reference's.
      val[n] += min(weight, ref_weight) * ref_weight
    if norm_hyp[n] != 0 and norm_ref[n] != 0:
      val[n] /= norm_hyp[n] * norm_ref[n]
    val[n] *= penalty
  return val


def cider_d_image_score(stats: CiderImageStats, df: DocumentFrequency,
                        sigma: float = CIDER_SIGMA,
                        max_n: int = CIDER_MAX_NGRAM) -> float:
  """CIDEr-D of one image given the split's document frequencies."""
  if df.num_images <= 0:
    raise ValueError("document frequencies cover no images")
  log_n = math.log(float(df.num_images))
  vec, norm, length = _tfidf_vector(stats.hypothesis, df, log_n, max_n)
  score = [0.0] * max_n
  for ref in stats.references:
    vec_ref, norm_ref, length_ref = _tfidf_vector(ref, df, log_n, max_n)
    sim = _similarity(vec, vec_ref, norm, norm_ref, length, length_ref, sigma,
                      max_n)
    score = [a + b for a, b in zip(score, sim)]
  # Mean over n-gram orders, mean over references, times 10.
  return (sum(score) / max_n) / len(stats.references) * 10.0


def cider_d_from_stats(
    image_stats: Mapping[ImageId, CiderImageStats],
    df: Optional[DocumentFrequency] = None,
    sigma: float = CIDER_SIGMA,
    max_n: int = CIDER_MAX_NGRAM,
) -> Tuple[float, Dict[ImageId, float]]:
  """(corpus CIDEr-D, per-image CIDEr-D) from per-image stats.

  ``df`` defaults to the document frequencies of ``image_stats`` themselves,
  which is what pycocoevalcap does; pass a split-wide one to score a subset
  (e.g. a slice) against the whole split's idf.  The corpus score is the
  mean over images (NaN for no images, like numpy's mean of nothing).
  """
  if df is None:
    df = document_frequency(image_stats.values())
  per_image = {image_id: cider_d_image_score(stats, df, sigma, max_n)
               for image_id, stats in image_stats.items()}
  return _mean(per_image.values()), per_image


@dataclasses.dataclass
class CiderAccumulator:
  """Mergeable CIDEr-D state: per-image n-gram counts + document frequencies."""
  images: Dict[ImageId, CiderImageStats] = dataclasses.field(
      default_factory=dict)
  document_frequency: DocumentFrequency = dataclasses.field(
      default_factory=DocumentFrequency)

  def add(self, image_id: ImageId, hypothesis: str,
          references: Sequence[str]) -> None:
    if image_id in self.images:
      # A second add would count the image twice in the document frequencies.
      raise ValueError(f"image {image_id!r} added twice")
    stats = CiderImageStats.from_captions(hypothesis, references)
    self.images[image_id] = stats
    self.document_frequency.add_image(stats.references)

  def merge(self, other: "CiderAccumulator") -> "CiderAccumulator":
    """Adds ``other`` into self (in place) and returns self."""
    overlap = self.images.keys() & other.images.keys()
    if overlap:
      raise ValueError(f"images in both accumulators: {sorted(map(str, overlap))[:5]}")
    self.images.update(other.images)
    self.document_frequency.merge(other.document_frequency)
    return self

  def result(self) -> Tuple[float, Dict[ImageId, float]]:
    return cider_d_from_stats(self.images, self.document_frequency)


def cider_d(
    hypotheses: Mapping[ImageId, str],
    references: Mapping[ImageId, Sequence[str]],
) -> Tuple[float, Dict[ImageId, float]]:
  """(corpus, per-image) CIDEr-D, as pycocoevalcap's Cider().compute_score.

  ``hypotheses`` maps image id -> one tokenized caption; ``references`` maps
  the same ids -> tokenized reference captions.
  """
  _check_same_images(hypotheses, references)
  acc = CiderAccumulator()
  for image_id, hypothesis in hypotheses.items():
    acc.add(image_id, hypothesis, references[image_id])
  return acc.result()


# ---------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence of two token lists."""
  if len(a) < len(b):
    a, b = b, a
  # One row of the DP table, over the shorter sequence.
  previous = [0] * (len(b) + 1)
  for token_a in a:
    current = [0]
    for j, token_b in enumerate(b, start=1):
      if token_a == token_b:
        current.append(previous[j - 1] + 1)
      else:
        current.append(max(previous[j], current[j - 1]))
    previous = current
  return previous[-1]


def rouge_l_image_score(hypothesis: str, references: Sequence[str],
                        beta: float = ROUGE_BETA) -> float:
  """ROUGE-L of one image (rouge.Rouge.calc_score).

  Precision and recall are each maximised over the references separately,
  then combined into an F-measure with recall weighted by beta.
  """
  if isinstance(references, str):
    raise TypeError("references must be a sequence of captions, not a str")
  if not references:
    raise ValueError("ROUGE-L needs at least one reference per image")
  hyp_tokens = hypothesis.split(" ")  # split(" "), as rouge.py does
  precisions, recalls = [], []
  for reference in references:
    ref_tokens = reference.split(" ")
    lcs = lcs_length(ref_tokens, hyp_tokens)
    precisions.append(lcs / float(len(hyp_tokens)))
    recalls.append(lcs / float(len(ref_tokens)))
  prec_max, rec_max = max(precisions), max(recalls)
  if prec_max != 0 and rec_max != 0:
    return ((1 + beta ** 2) * prec_max * rec_max) / float(
        rec_max + beta ** 2 * prec_max)
  return 0.0


@dataclasses.dataclass
class RougeAccumulator:
  """Mergeable ROUGE-L state: the per-image scores (they are independent)."""
  scores: Dict[ImageId, float] = dataclasses.field(default_factory=dict)

  def add(self, image_id: ImageId, hypothesis: str,
          references: Sequence[str]) -> None:
    if image_id in self.scores:
      raise ValueError(f"image {image_id!r} added twice")
    self.scores[image_id] = rouge_l_image_score(hypothesis, references)

  def merge(self, other: "RougeAccumulator") -> "RougeAccumulator":
    """Adds ``other`` into self (in place) and returns self."""
    overlap = self.scores.keys() & other.scores.keys()
    if overlap:
      raise ValueError(f"images in both accumulators: {sorted(map(str, overlap))[:5]}")
    self.scores.update(other.scores)
    return self

  def result(self) -> Tuple[float, Dict[ImageId, float]]:
    return _mean(self.scores.values()), dict(self.scores)


def rouge_l(
    hypotheses: Mapping[ImageId, str],
    references: Mapping[ImageId, Sequence[str]],
) -> Tuple[float, Dict[ImageId, float]]:
  """(corpus, per-image) ROUGE-L, as pycocoevalcap's Rouge().compute_score."""
  _check_same_images(hypotheses, references)
  acc = RougeAccumulator()
  for image_id, hypothesis in hypotheses.items():
    acc.add(image_id, hypothesis, references[image_id])
  return acc.result()


# ---------------------------------------------------------------------------


def _check_same_images(hypotheses: Mapping, references: Mapping) -> None:
  # pycocoevalcap asserts gts.keys() == res.keys(); say which ids differ.
  if hypotheses.keys() != references.keys():
    missing = set(hypotheses) ^ set(references)
    raise ValueError("hypotheses and references cover different images: "
                     f"{sorted(map(str, missing))[:5]}")


def _mean(values: Iterable[float]) -> float:
  values = list(values)
  return sum(values) / len(values) if values else float("nan")
