"""Deterministic caption fixtures for the metric tests (tests/unit/).

Built from word lists with a seeded random.Random, so they need no data files
and every run (and CI) sees the same captions:

* raw_captions(seed, n): untokenized captions exercising what coco-caption's
  PTBTokenizer treats specially (hyphens, clitics, abbreviations, numbers,
  quotes, brackets, punctuation runs, accents and curly quotes).
* caption_split(seed, n_images): image id -> (hypothesis, references), raw
  text; references share a scene per image and the hypothesis reuses part
  of it, so CIDEr-D and ROUGE-L land between 0 and their maximum.
* pycocoevalcap_scores(split): what coco-caption reports for such a split,
  the oracle that `captioner bleu` and the Evaluator are checked against.
"""

import random
from typing import Dict, List, Sequence, Tuple

SUBJECTS = [
    "a man", "a woman", "two men", "a young boy", "the girl", "a black-haired "
    "woman", "an old man", "a dog", "two dogs", "a brown-and-white cat",
    "the toddler", "a skateboarder", "a police officer", "a group of people",
    "Mr. Smith", "Dr. Jones", "the 3-year-old", "a well-dressed couple",
    "a man's dog", "the children's teacher", "St. Bernard puppies",
]
VERBS = [
    "is riding", "rides", "is sitting on", "stands next to", "is holding",
    "is n't holding", "looks at", "is jumping over", "walks past", "throws",
    "can't reach", "won't eat", "doesn't like", "they're near", "is eating",
    "plays with", "is parked by", "cannot see", "is gonna climb", "leans on",
]
OBJECTS = [
    "a red bicycle", "the close-up camera", "a surfboard", "a frisbee",
    "a pizza", "the fire hydrant", "a double-decker bus", "a hot-dog stand",
    "a stop sign", "an x-ray machine", "the kite", "a plate of food",
    "a T-shirt", "his mother's umbrella", "a 10-speed bike", "two teddy bears",
    "a café table", "the U.S. flag", "a 1/2 pizza", "3,000 balloons",
]
PLACES = [
    "in the park", "on a sunny day", "at the beach", "near St. Louis",
    "in front of a building", "on the street", "at 5:30 p.m.", "in a kitchen",
    "by the lake", "on a snow-covered hill", "in New York", "at the zoo",
    "under a tree", "during the 1990s", "at 3.5 miles", "on Main St.",
]
ENDINGS = [".", "", " .", "!", "!!", "?", "...", " ?!", ". ", "..", "\u2026"]
DECORATIONS = [
    lambda s: s,
    lambda s: s,
    lambda s: s,
    lambda s: s.capitalize(),
    lambda s: s.upper(),
    lambda s: f'"{s}"',
    lambda s: f"\u201c{s}\u201d",
    lambda s: f"({s})",
    lambda s: f"[{s}]",
    lambda s: f"{{{s}}}",
    lambda s: s.replace("'", "\u2019"),
    lambda s: s.replace(" a ", " a -- "),
    lambda s: s.replace(" ", "  ", 1),
    lambda s: s.replace("the ", "the 'old' ", 1),
    lambda s: s.replace(" is ", " is, ", 1),
    lambda s: s + "; very nice",
    lambda s: s + ": a view",
    lambda s: s + " & more",
    lambda s: s + " etc.",
    lambda s: s + " e.g. a cat",
    lambda s: s + " (i.e. home)",
    lambda s: s.replace("a ", "a na\u00efve ", 1),
    lambda s: s + " 50% off $5",
    lambda s: s + " w/ friends and/or family",
    lambda s: s + " -- x-ray - style",
    lambda s: "\u2018" + s + "\u2019",
    lambda s: s + " rock 'n' roll",
    lambda s: s + " it's Tom's",
    lambda s: s + " 'tis y'all o'clock",
    lambda s: s + " vs. them",
    lambda s: s + " A.",
    lambda s: s + " No. 5",
]

# Words whose tokens are kept whole by the PTB tokenizer, for hypotheses.
EXTRA_WORDS = ["black-haired", "close-up", "'s", "n't", "'re", "x-ray",
               "well-dressed", "st.", "mr.", "3-year-old", "red", "blue", "big"]


def raw_captions(seed: int, n: int) -> List[str]:
  """n untokenized, varied captions (one scene each, decorated)."""
  rng = random.Random(seed)
  captions = []
  for _ in range(n):
    caption = " ".join([rng.choice(SUBJECTS), rng.choice(VERBS),
                        rng.choice(OBJECTS)])
    if rng.random() < 0.6:
      caption += " " + rng.choice(PLACES)
    for _ in range(rng.choice([0, 1, 1, 2])):
      caption = rng.choice(DECORATIONS)(caption)
    caption += rng.choice(ENDINGS)
    if rng.random() < 0.1:  # a second sentence
      caption += " " + rng.choice(SUBJECTS).capitalize() + " watches."
    captions.append(caption)
  return captions


def caption_split(seed: int, n_images: int,
                  max_references: int = 5) -> Dict[str, Tuple[str, List[str]]]:
  """image id -> (raw hypothesis, raw references) with partial overlap.

  Some images get a single reference, and a few hypotheses are empty or
  shorter than 4 tokens, so the edge cases are inside the fixture too.
  """
  rng = random.Random(seed)
  split = {}
  for index in range(n_images):
    subject, verb, obj, place = (rng.choice(SUBJECTS), rng.choice(VERBS),
                                 rng.choice(OBJECTS), rng.choice(PLACES))
    n_refs = 1 if index % 7 == 0 else rng.randint(2, max_references)
    references = []
    for _ in range(n_refs):
      parts = [subject if rng.random() < 0.8 else rng.choice(SUBJECTS),
               verb if rng.random() < 0.6 else rng.choice(VERBS),
               obj if rng.random() < 0.7 else rng.choice(OBJECTS)]
      if rng.random() < 0.5:
        parts.append(place)
      references.append(" ".join(parts) + rng.choice([".", "", " !"]))
    kind = index % 11
    if kind == 0:
      hypothesis = ""
    elif kind == 1:
      hypothesis = rng.choice(["a dog", "man", "a close-up"])  # < 4 tokens
    else:
      words = " ".join([subject, rng.choice([verb, rng.choice(VERBS)]),
                        rng.choice([obj, rng.choice(OBJECTS)])]).split()
      # Drop or add a few words so the overlap is partial.
      words = [w for w in words if rng.random() < 0.85]
      for _ in range(rng.randint(0, 2)):
        words.insert(rng.randint(0, len(words)), rng.choice(EXTRA_WORDS))
      hypothesis = " ".join(words)
    split[f"img{seed}_{index:04d}"] = (hypothesis, references)
  return split


def flatten(split: Dict[str, Tuple[str, Sequence[str]]]) -> List[str]:
  """All captions of a split, hypotheses first, in a fixed order."""
  return ([h for h, _ in split.values()] +
          [r for _, refs in split.values() for r in refs])


# pycocoevalcap's Bleu(4) on caption_split(16, 120) after ptb_tokenize, for the
# project's own BLEU to be compared with (tests/unit/test_coco_metrics.py
# checks that these still hold).
PYCOCOEVALCAP_BLEU_1_TO_4_MAIN = (0.460578, 0.369808, 0.29559, 0.232817)


# The fixtures the metrics are checked on: the main one (a few hundred
# captions) and a held-out one of another seed and size.
MAIN = (16, 120)
HELD_OUT = (1601, 45)


def pycocoevalcap_scores(split: Dict[str, Tuple[str, Sequence[str]]]) -> dict:
  """pycocoevalcap's BLEU-1..4, CIDEr-D and ROUGE-L of a caption_split.

  Tokenized as coco-caption tokenizes, by core.ptb_tokenizer (equal to the
  real PTBTokenizer jar: tests/unit/test_coco_metrics.py), since
  pycocoevalcap's own PTBTokenizer needs Java; then its scorers, as
  COCOEvalCap runs them. Keys as `captioner bleu --json` writes them.
  """
  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  from core import ptb_tokenizer
  gts = {i: ptb_tokenizer.ptb_tokenize_many(refs)
         for i, (_, refs) in split.items()}
  res = {i: [ptb_tokenizer.ptb_tokenize(h)] for i, (h, _) in split.items()}
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  scores = {f"bleu_{n}": float(b) for n, b in enumerate(bleu, start=1)}
  scores["cider_d"] = float(Cider().compute_score(gts, res)[0])
  scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
  return scores
