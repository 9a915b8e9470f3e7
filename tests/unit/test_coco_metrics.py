"""core.coco_metrics and core.ptb_tokenizer against coco-caption itself.

CIDEr-D and ROUGE-L must equal pycocoevalcap's Cider / Rouge (corpus and per
image) on deterministic fixtures (tests/helpers/coco_fixtures.py); the tokenizer must equal
the real Stanford PTBTokenizer 3.4.1 jar that pycocoevalcap ships, whenever
java is available.
"""

import os
import shutil
import subprocess
import tempfile

import pytest

from core import coco_metrics
from core import ptb_tokenizer
from core import scoring

from tests.helpers import coco_fixtures

pycocoevalcap = pytest.importorskip("pycocoevalcap.cider.cider")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402
from pycocoevalcap.tokenizer import ptbtokenizer  # noqa: E402

TOLERANCE = 1e-4
JAR = os.path.join(os.path.dirname(ptbtokenizer.__file__),
                   ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)


def tokenized_split(seed, n_images):
  """(hypotheses, references) of a fixture, tokenized as coco-caption does."""
  split = coco_fixtures.caption_split(seed, n_images)
  hypotheses = {i: ptb_tokenizer.ptb_tokenize(h) for i, (h, _) in split.items()}
  references = {i: ptb_tokenizer.ptb_tokenize_many(refs)
                for i, (_, refs) in split.items()}
  return hypotheses, references


def pycoco_scores(scorer, hypotheses, references):
  corpus, per_image = scorer.compute_score(
      references, {i: [h] for i, h in hypotheses.items()})
  return corpus, dict(zip(references.keys(), per_image))


def assert_scores_match(ours, theirs):
  corpus, per_image = ours
  their_corpus, their_per_image = theirs
  assert corpus == pytest.approx(their_corpus, abs=TOLERANCE)
  assert per_image.keys() == their_per_image.keys()
  worst = max(abs(per_image[i] - their_per_image[i]) for i in per_image)
  assert worst <= TOLERANCE


# The main fixture (a few hundred captions) and a held-out one of another
# seed and size.
FIXTURES = [pytest.param(*coco_fixtures.MAIN, id="main"),
            pytest.param(*coco_fixtures.HELD_OUT, id="held-out")]


@pytest.mark.parametrize("seed,n_images", FIXTURES)
def test_cider_d_equals_pycocoevalcap(seed, n_images):
  hypotheses, references = tokenized_split(seed, n_images)
  assert sum(map(len, references.values())) >= 100 or n_images < 100
  assert_scores_match(coco_metrics.cider_d(hypotheses, references),
                      pycoco_scores(Cider(), hypotheses, references))


@pytest.mark.parametrize("seed,n_images", FIXTURES)
def test_rouge_l_equals_pycocoevalcap(seed, n_images):
  hypotheses, references = tokenized_split(seed, n_images)
  assert_scores_match(coco_metrics.rouge_l(hypotheses, references),
                      pycoco_scores(Rouge(), hypotheses, references))


def test_fixture_has_hyphens_clitics_and_partial_overlap():
  hypotheses, references = tokenized_split(16, 120)
  tokens = {t for refs in references.values() for r in refs for t in r.split()}
  assert {"close-up", "black-haired", "'s", "n't", "ca", "st."} <= tokens
  cider, per_image = coco_metrics.cider_d(hypotheses, references)
  assert 0 < cider < 10
  assert 0 < sum(1 for s in per_image.values() if s > 0) < len(per_image)


def test_bleu_of_the_fixture_for_the_record():
  """pycocoevalcap's BLEU-1..4 on the main fixture, recorded (the project
  has its own BLEU; compare it with these numbers there)."""
  hypotheses, references = tokenized_split(16, 120)
  bleu, _ = Bleu(4).compute_score(references,
                                  {i: [h] for i, h in hypotheses.items()},
                                  verbose=0)
  print("pycocoevalcap BLEU-1..4 on coco_fixtures.caption_split(16, 120):",
        [round(b, 6) for b in bleu])
  assert bleu == pytest.approx(
      list(coco_fixtures.PYCOCOEVALCAP_BLEU_1_TO_4_MAIN), abs=1e-6)


def test_merging_halves_equals_scoring_all():
  hypotheses, references = tokenized_split(16, 120)
  ids = list(hypotheses)
  halves = ids[:50], ids[50:]
  cider_parts, rouge_parts = [], []
  for half in halves:
    cider_acc, rouge_acc = (coco_metrics.CiderAccumulator(),
                            coco_metrics.RougeAccumulator())
    for i in half:
      cider_acc.add(i, hypotheses[i], references[i])
      rouge_acc.add(i, hypotheses[i], references[i])
    cider_parts.append(cider_acc)
    rouge_parts.append(rouge_acc)
  cider_corpus, cider_per_image = cider_parts[0].merge(cider_parts[1]).result()
  rouge_corpus, rouge_per_image = rouge_parts[0].merge(rouge_parts[1]).result()
  all_cider = coco_metrics.cider_d(hypotheses, references)
  all_rouge = coco_metrics.rouge_l(hypotheses, references)
  assert cider_corpus == pytest.approx(all_cider[0], abs=1e-12)
  assert rouge_corpus == pytest.approx(all_rouge[0], abs=1e-12)
  assert cider_per_image == pytest.approx(all_cider[1], abs=1e-12)
  assert rouge_per_image == pytest.approx(all_rouge[1], abs=1e-12)


def test_document_frequencies_merge_and_score_a_subset():
  hypotheses, references = tokenized_split(16, 120)
  stats = {i: coco_metrics.CiderImageStats.from_captions(hypotheses[i],
                                                         references[i])
           for i in hypotheses}
  ids = list(stats)
  df = coco_metrics.document_frequency(stats[i] for i in ids[:70]).merge(
      coco_metrics.document_frequency(stats[i] for i in ids[70:]))
  assert df.num_images == 120
  assert df == coco_metrics.document_frequency(stats.values())
  # Scoring a subset against the whole split's idf gives the split's
  # per-image scores; against its own idf (pycocoevalcap's way) it differs.
  _, everything = coco_metrics.cider_d_from_stats(stats, df)
  subset = {i: stats[i] for i in ids[:30]}
  _, with_split_idf = coco_metrics.cider_d_from_stats(subset, df)
  assert with_split_idf == {i: everything[i] for i in ids[:30]}
  _, with_own_idf = coco_metrics.cider_d_from_stats(subset)
  assert with_own_idf != with_split_idf


def test_merging_the_same_image_twice_is_refused():
  a, b = coco_metrics.CiderAccumulator(), coco_metrics.CiderAccumulator()
  a.add("x", "a dog", ["a dog runs"])
  b.add("x", "a dog", ["a dog runs"])
  with pytest.raises(ValueError, match="both"):
    a.merge(b)
  with pytest.raises(ValueError, match="twice"):
    a.add("x", "a cat", ["a cat"])


EDGE_CASES = {
    "empty": ("", ["a man riding a horse", "a person on a horse"]),
    "one_reference": ("a man riding a horse", ["a man rides a brown horse"]),
    "short": ("a man", ["a man riding a horse on the beach", "a man"]),
    "one_token": ("horse", ["a horse", "horse in a field"]),
    "exact": ("a dog is n't here", ["a dog is n't here", "no dog"]),
    "disjoint": ("zebra stripes", ["a red car", "the blue bus"]),
}


@pytest.mark.parametrize("metric,scorer", [
    (coco_metrics.cider_d, Cider), (coco_metrics.rouge_l, Rouge)])
def test_edge_cases_equal_pycocoevalcap(metric, scorer):
  hypotheses = {k: h for k, (h, _) in EDGE_CASES.items()}
  references = {k: refs for k, (_, refs) in EDGE_CASES.items()}
  ours = metric(hypotheses, references)
  assert_scores_match(ours, pycoco_scores(scorer(), hypotheses, references))
  assert ours[1]["empty"] == 0.0
  assert ours[1]["disjoint"] == 0.0


def test_inputs_are_checked():
  with pytest.raises(ValueError, match="different images"):
    coco_metrics.cider_d({"a": "x"}, {"b": ["x"]})
  with pytest.raises(ValueError, match="at least one reference"):
    coco_metrics.rouge_l({"a": "x"}, {"a": []})
  with pytest.raises(TypeError):
    coco_metrics.cider_d({"a": "x"}, {"a": "x y"})
  corpus, per_image = coco_metrics.cider_d({}, {})
  assert per_image == {} and corpus != corpus  # NaN, like numpy's empty mean


# --- core.scoring: the project's six metrics on raw captions ----------------


@pytest.mark.parametrize("seed,n_images", FIXTURES)
def test_caption_scores_of_raw_captions_equal_pycocoevalcap(seed, n_images):
  split = coco_fixtures.caption_split(seed, n_images)
  ours = scoring.caption_scores([h for h, _ in split.values()],
                                [refs for _, refs in split.values()])
  theirs = coco_fixtures.pycocoevalcap_scores(split)
  assert set(ours) == set(theirs) == set(scoring.METRIC_NAMES)
  assert ours == pytest.approx(theirs, abs=TOLERANCE)
  assert {type(v) for v in ours.values()} == {float}
  # Pre-tokenized text (--pretokenized) scores the same.
  hypotheses, references = tokenized_split(seed, n_images)
  pretokenized = scoring.caption_scores(
      list(hypotheses.values()), list(references.values()), pretokenized=True)
  assert pretokenized == pytest.approx(ours, abs=1e-12)


def test_caption_statistics_merge_in_any_order():
  split = coco_fixtures.caption_split(1601, 45)
  pairs = list(split.values())
  whole = scoring.CaptionStatistics()
  for h, refs in pairs:
    whole.add(h, refs)
  parts = [scoring.CaptionStatistics() for _ in range(3)]
  for index, (h, refs) in enumerate(pairs):
    parts[index % 3].add(h, refs)
  merged = scoring.CaptionStatistics().merge(parts[2]).merge(parts[0]).merge(
      parts[1])
  assert merged.bleu == whole.bleu
  assert merged.scores() == pytest.approx(whole.scores(), abs=1e-12)
  assert scoring.CaptionStatistics().scores() == {
      name: 0.0 for name in scoring.METRIC_NAMES}


def test_image_scores_average_to_the_corpus_with_the_split_idf():
  split = coco_fixtures.caption_split(16, 120)
  df = scoring.document_frequency(refs for _, refs in split.values())
  per_image = [scoring.image_scores(h, refs, df) for h, refs in split.values()]
  corpus = scoring.caption_scores([h for h, _ in split.values()],
                                  [refs for _, refs in split.values()])
  for name in (scoring.CIDER_D, scoring.ROUGE_L):
    mean = sum(s[name] for s in per_image) / len(per_image)
    assert mean == pytest.approx(corpus[name], abs=1e-12), name
  hypothesis, refs = next(iter(split.values()))
  assert scoring.CIDER_D not in scoring.image_scores(hypothesis, refs)


def test_scores_use_ptb_tokens_not_the_training_normalization():
  # PTB keeps "close-up" whole and splits "dog's"; core.text.normalize
  # would give "close up" and "dog s".
  assert scoring.tokenize("A close-up of a dog's ball.") == (
      "a close-up of a dog 's ball")
  assert scoring.corpus_bleu(["a close-up"], [["a close up"]])["bleu_2"] == 0
  assert scoring.corpus_bleu(["a close-up"], [["A close-up."]])[
      "bleu_2"] == pytest.approx(1.0)


# --- Tokenizer --------------------------------------------------------------

# (raw caption, coco-caption's tokenized caption) from the real 3.4.1 jar.
# Note its quirks: lowercased brackets survive the punctuation filter, "!!"
# and "?!" too, abbreviations and u.s. keep their period, a final single
# letter's period is split off (the next caption starts "A ...").
TOKENIZER_CASES = [
    ("A man's colour-coded jacket isn't red.",
     "a man 's colour-coded jacket is n't red"),
    ("They're we've I'll he'd I'm can't won't cannot gonna",
     "they 're we 've i 'll he 'd i 'm ca n't wo n't can not gon na"),
    ("A black-haired woman takes a close-up.",
     "a black-haired woman takes a close-up"),
    ("Mr. Smith and Dr. Who on St. Mary's street, etc.",
     "mr. smith and dr. who on st. mary 's street etc."),
    ("The centre of St. Louis", "the centre of st. louis"),
    ("A U.S. flag. Go to St.", "a u.s. flag go to st."),
    ("3,000.50 people, 50% off $5 at 5:30 and 1/2",
     "3,000.50 people 50 % off $ 5 at 5:30 and 1/2"),
    ('He said "hello" (loudly) [maybe] {ok} & more',
     "he said hello -lrb- loudly -rrb- -lsb- maybe -rsb- -lcb- ok -rcb- & more"),
    ("Caf\u00e9 \u201ccurly\u201d \u2018single\u2019 \u2014 dash -- x - y.",
     "caf\u00e9 curly single dash x y"),
    ("hey!!! what?!? wow!? ok... so\u2026", "hey !!! what ?!? wow !? ok so"),
    ("rock 'n' roll at 5 o'clock, y'all", "rock 'n' roll at 5 o'clock y' all"),
    ("'tis the dog's", "'t is the dog 's"),
    ("the letter x. A dog", "the letter x a dog"),
    ("no. 5 and no. The", "no. 5 and no the"),
    ("B&W photo of b&w AT&T", "b&w photo of b & w at&t"),
    ("", ""),
    ("...", ""),
]


@pytest.mark.parametrize("raw,expected", TOKENIZER_CASES)
def test_ptb_tokenize_fixed_cases(raw, expected):
  assert ptb_tokenizer.ptb_tokenize(raw) == expected


def test_pretokenized_only_normalises_whitespace():
  assert (ptb_tokenizer.ptb_tokenize("  A dog 's\tBall . ", pretokenized=True)
          == "A dog 's Ball .")
  assert ptb_tokenizer.ptb_tokenize_many(["a  b", "C."]) == ["a b", "c"]


def run_real_ptb_tokenizer(lines):
  """pycocoevalcap's java command on lines (one caption each), raw output.

  It is the command of ptbtokenizer.PTBTokenizer, run on a file of our own
  (its tokenize() writes its temporary file next to the jar, in site-packages).
  """
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "captions.txt")
    with open(path, "wb") as f:
      f.write("\n".join(lines).encode())
    out = subprocess.run(
        ["java", "-cp", JAR, "edu.stanford.nlp.process.PTBTokenizer",
         "-preserveLines", "-lowerCase", path],
        capture_output=True, check=True, timeout=120)
  return out.stdout.decode().split("\n")


def coco_filter(line):
  # pycocoevalcap's post-processing of the jar's output line.
  return " ".join(w for w in line.rstrip().split(" ")
                  if w not in ptbtokenizer.PUNCTUATIONS)


@pytest.mark.skipif(shutil.which("java") is None or not os.path.exists(JAR),
                    reason="java or pycocoevalcap's stanford-corenlp-3.4.1.jar "
                    "is missing, so the real PTBTokenizer cannot run")
def test_ptb_tokenize_equals_real_ptbtokenizer():
  captions = (coco_fixtures.raw_captions(7, 400) +
              [raw for raw, _ in TOKENIZER_CASES if raw] +
              coco_fixtures.flatten(coco_fixtures.caption_split(16, 40)))
  # Every caption is followed by one starting "A " (what ptb_tokenize assumes
  # comes next; it only matters for a final "x." -- see the module docstring).
  lines = [line for caption in captions for line in (caption, "A man")]
  real = run_real_ptb_tokenizer(lines)[0::2]
  assert len(real) == len(captions)
  mismatches = [(c, coco_filter(r), ptb_tokenizer.ptb_tokenize(c))
                for c, r in zip(captions, real)
                if coco_filter(r) != ptb_tokenizer.ptb_tokenize(c)]
  assert not mismatches, mismatches[:10]
  # The raw tokens (before the punctuation filter) agree too.
  raw_mismatches = [c for c, r in zip(captions, real)
                    if " ".join(ptb_tokenizer.ptb_tokens(c)) != r.rstrip()]
  assert not raw_mismatches, raw_mismatches[:10]
