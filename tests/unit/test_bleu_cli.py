"""Tests for `captioner bleu`: agreement with coco-caption, output, errors."""

import json
import os
import subprocess
import sys

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from captioner import cli
from core import ptb_tokenizer
from core.config import REPO_ROOT
from tests.helpers import coco_fixtures

CAPTIONER = os.path.join(os.path.dirname(sys.executable), "captioner")
BLEU_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
LABELS = {"bleu_1": "BLEU-1", "bleu_2": "BLEU-2", "bleu_3": "BLEU-3",
          "bleu_4": "BLEU-4", "cider_d": "CIDEr-D", "rouge_l": "ROUGE-L"}

# 30 COCO-like images, 5 references each, and one generated caption per
# image, already PTB-tokenized (lowercase, no punctuation), so coco-caption's
# scorers and ours see the same tokens. Hypotheses range from 3 to 16 tokens;
# `test_fixture_covers_the_hard_cases` checks what they are meant to cover.
IMAGES = [
    (["a man riding a wave on top of a surfboard",
      "a surfer rides a large wave in the ocean",
      "a person on a surfboard riding a wave",
      "a man surfing on a big blue wave",
      "surfer in a black wetsuit catching a wave"],
     "a man riding a wave on a surfboard"),
    (["a plate of food with broccoli and rice",
      "a white plate topped with meat and vegetables",
      "a dinner plate with chicken broccoli and rice",
      "food on a plate on a wooden table",
      "a close up of a plate of food"],
     "a plate of food with broccoli"),
    (["a cat sitting on top of a laptop keyboard",
      "a black and white cat laying on a laptop",
      "a cat is lying on the keyboard of a computer",
      "a kitten resting on an open laptop",
      "a cat on a desk next to a computer"],
     "a cat laying on a laptop computer"),
    (["two giraffes standing in a grassy field",
      "a pair of giraffes near some trees",
      "two giraffes eating leaves from a tall tree",
      "giraffes standing in the wild",
      "two tall giraffes in an open field"],
     "two giraffes standing in a field"),
    (["a red double decker bus driving down a street",
      "a double decker bus on a city street",
      "a red bus stopped at a bus stop",
      "a large red bus driving past some buildings",
      "a red tour bus in the city"],
     "a red bus"),
    (["a group of people flying kites on a beach",
      "several kites flying in the sky over the sand",
      "people on the beach with colorful kites",
      "a beach full of people and kites",
      "kites fly above a crowded beach"],
     "people flying kites on the beach"),
    (["a baseball player swinging a bat at a ball",
      "a batter swings at a pitch during a game",
      "a baseball player at home plate with a bat",
      "a man holding a baseball bat on a field",
      "the catcher waits as the batter swings"],
     "a baseball player holding a bat on a field"),
    (["a kitchen with wooden cabinets and a white stove",
      "a small kitchen with a stove and a sink",
      "an empty kitchen with brown cabinets",
      "a clean kitchen with a refrigerator and an oven",
      "kitchen counters with a microwave and a toaster"],
     "a kitchen with a stove and a refrigerator"),
    (["a dog catching a frisbee in the park",
      "a brown dog jumps to catch a flying disc",
      "a dog leaping in the air for a frisbee",
      "a dog playing with a frisbee on the grass",
      "a happy dog running after a frisbee"],
     "a dog jumping to catch a frisbee"),
    (["a bowl of fruit on a table",
      "bananas apples and oranges in a bowl",
      "a glass bowl filled with fresh fruit",
      "a bowl full of apples sitting on a counter",
      "fruit in a bowl next to a window"],
     "a bowl of oranges and bananas"),
    (["a man in a suit and tie standing in a room",
      "a man wearing a blue tie and a white shirt",
      "a businessman posing for a photo",
      "a young man in a dark suit smiling",
      "a man dressed in a suit with a red tie"],
     "a man wearing a suit and tie"),
    (["a train traveling down the tracks near a station",
      "a yellow and blue train on a railway",
      "a passenger train pulling into a station",
      "a long train moving along the tracks",
      "a commuter train waiting at the platform"],
     "a train on the tracks at a station"),
    (["a herd of elephants walking across a dry field",
      "elephants walking together on the savannah",
      "a group of elephants near a watering hole",
      "several elephants standing in the dirt",
      "an elephant family walking in a line"],
     "a group of elephants walking in a field"),
    (["a woman holding an umbrella in the rain",
      "a person walking down a wet street with an umbrella",
      "a woman with a pink umbrella on a sidewalk",
      "people walking in the rain with umbrellas",
      "a lady carrying an umbrella on a rainy day"],
     "a woman walking with an umbrella"),
    (["a pizza with cheese and pepperoni on a pan",
      "a large pizza sitting on a wooden table",
      "a pepperoni pizza cut into slices",
      "a freshly baked pizza with lots of cheese",
      "a whole pizza on top of a stove"],
     "a pizza on a table"),
    (["a bathroom with a toilet and a sink",
      "a white toilet next to a bathroom sink",
      "a small bathroom with a shower and a toilet",
      "a clean bathroom with white tiles",
      "the inside of a bathroom with a mirror"],
     "a white bathroom with a toilet and a sink"),
    (["a man riding a skateboard down a ramp",
      "a skateboarder doing a trick at a skate park",
      "a young man on a skateboard in the air",
      "a boy skating on a concrete ramp",
      "a person performing a jump on a skateboard"],
     "a man doing a trick on a skateboard"),
    (["a clock tower in the middle of a city",
      "a tall clock tower against a blue sky",
      "a large clock on the side of a building",
      "an old stone tower with a clock",
      "a clock tower next to some trees"],
     "a tall tower with a clock on it"),
    (["a cow standing in a grassy pasture",
      "brown cows grazing in a green field",
      "a cow eating grass on a farm",
      "a herd of cattle in a meadow",
      "a black and white cow looking at the camera"],
     "brown cows grazing in a green grassy field"),
    (["a tennis player hitting a ball with a racket",
      "a woman swinging a tennis racket on a court",
      "a man playing tennis on a clay court",
      "a tennis player reaching for the ball",
      "a player serving the ball during a match"],
     "a man swinging a tennis racket at a ball"),
    (["a laptop and a monitor on a desk",
      "a computer desk with a keyboard and a mouse",
      "a home office with two computer screens",
      "a desk with a laptop and some papers",
      "an office desk with a computer on it"],
     "a desk with a computer and a keyboard"),
    (["a sandwich and fries on a plate",
      "a plate with a sandwich and french fries",
      "a burger with fries on a white plate",
      "half a sandwich next to some chips",
      "a toasted sandwich cut in half"],
     "a hamburger and fries"),
    (["a bird perched on a tree branch",
      "a small bird sitting on a branch",
      "a blue bird standing on a twig",
      "a bird resting in a tree",
      "a little bird on a thin branch with leaves"],
     "a small bird sitting on a tree branch"),
    (["a boat floating on a calm lake",
      "a small boat docked at the shore",
      "a sailboat on the water at sunset",
      "boats in a harbor near some houses",
      "a white boat on a river"],
     "a boat in the water"),
    (["a child eating a slice of cake",
      "a little girl with a birthday cake",
      "a young boy blowing out candles on a cake",
      "a kid sitting at a table with a big cake",
      "a toddler with frosting on his face"],
     "a little girl eating a slice of cake"),
    (["a horse pulling a cart down a road",
      "a man riding in a horse drawn carriage",
      "a brown horse standing next to a fence",
      "a horse and buggy on a country road",
      "a carriage pulled by two horses"],
     "a horse on a road"),
    (["a living room with a couch and a television",
      "a cozy living room with a fireplace",
      "a couch and a coffee table in a room",
      "a room with a sofa chairs and a tv",
      "a large living room with wooden floors"],
     "a living room with a couch and a tv"),
    (["a stop sign on the corner of a street",
      "a red stop sign next to a road",
      "a stop sign in front of a building",
      "a street sign with trees behind it",
      "a stop sign at an intersection"],
     "sign red stop street"),
    (["a person skiing down a snowy slope",
      "a skier going down a mountain",
      "a man on skis in the snow",
      "a skier in a red jacket on a hill",
      "people skiing on a sunny day"],
     "a man in a red jacket skiing down a snow covered hill on a sunny day"),
    (["a fire hydrant on the side of a street",
      "a yellow fire hydrant on a sidewalk",
      "a red fire hydrant near the grass",
      "an old fire hydrant next to a curb",
      "a fire hydrant in front of a house"],
     "hydrant yellow sidewalk old"),
]


IMAGE_IDS = [139 + 37 * i for i in range(len(IMAGES))]


def _ngrams(tokens, n):
  return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _closest_lengths(hypothesis, references):
  length = len(hypothesis.split())
  lengths = sorted({len(r.split()) for r in references})
  best = min(abs(l - length) for l in lengths)
  return [l for l in lengths if abs(l - length) == best]


def _coco(pairs=None):
  """gts and res dicts as pycocoevalcap's scorers take them."""
  pairs = pairs if pairs is not None else list(zip(IMAGE_IDS, IMAGES))
  gts = {i: list(refs) for i, (refs, _) in pairs}
  res = {i: [hyp] for i, (_, hyp) in pairs}
  return gts, res


def _write_files(folder, images=None, results=None):
  """COCO captions and results files of the fixture (or of the arguments)."""
  images = images if images is not None else list(zip(IMAGE_IDS, IMAGES))
  annotations = {
      "info": {"description": "test fixture"},
      "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i, _ in images],
      "annotations": [
          {"id": 10 * i + k, "image_id": i, "caption": caption}
          for i, (refs, _) in images for k, caption in enumerate(refs)],
  }
  if results is None:
    results = [{"image_id": i, "caption": hyp} for i, (_, hyp) in images]
  paths = (os.path.join(folder, "captions.json"),
           os.path.join(folder, "results.json"))
  for path, content in zip(paths, (annotations, results)):
    with open(path, "w") as f:
      json.dump(content, f)
  return paths


def _printed_scores(stdout):
  scores = {}
  for line in stdout.splitlines():
    for key, label in LABELS.items():
      if line.startswith(label + " "):
        scores[key] = float(line.split()[1])
  return scores


def _main(capsys, *args):
  code = cli.main(["bleu", *args])
  out, err = capsys.readouterr()
  return code, out, err


def test_fixture_covers_the_hard_cases():
  hypotheses = [hyp for _, hyp in IMAGES]
  lengths = [len(h.split()) for h in hypotheses]
  assert len(IMAGES) == 30 and all(len(refs) == 5 for refs, _ in IMAGES)
  assert min(lengths) <= 3 and max(lengths) >= 15
  # A tie for the closest reference length (one shorter, one longer, none
  # equal): coco-caption takes the shorter.
  ties = [h for h, (refs, _) in zip(hypotheses, IMAGES)
          if len(_closest_lengths(h, refs)) == 2]
  assert len(ties) >= 5
  # Hypotheses that share no 4-gram with any of their references.
  no_4gram = [h for h, (refs, _) in zip(hypotheses, IMAGES)
              if not any(_ngrams(h.split(), 4) & _ngrams(r.split(), 4)
                         for r in refs)]
  assert len(no_4gram) >= 10
  # One hypothesis longer than all its references.
  assert any(len(h.split()) > max(len(r.split()) for r in refs)
             for h, (refs, _) in zip(hypotheses, IMAGES))
  # The corpus is shorter than its closest references, so the brevity
  # penalty applies and the tie rule changes the figures.
  reference_length = sum(min(_closest_lengths(h, refs))
                         for h, (refs, _) in zip(hypotheses, IMAGES))
  assert sum(lengths) < reference_length


def test_agrees_with_coco_caption(tmp_path):
  annotations, results = _write_files(str(tmp_path))
  out_json = str(tmp_path / "scores.json")
  run = subprocess.run(
      [CAPTIONER, "bleu", "--annotations", annotations, "--results", results,
       "--json", out_json], capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr

  gts, res = _coco()
  coco_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  printed = _printed_scores(run.stdout)
  assert set(printed) == set(LABELS)
  for key, expected in zip(BLEU_KEYS, coco_bleu):
    assert printed[key] == pytest.approx(expected, abs=1e-4), key
  assert "30 images, 150 reference captions" in run.stdout

  with open(out_json) as f:
    written = json.load(f)
  for key, expected in zip(BLEU_KEYS, coco_bleu):
    # Full precision: coco-caption's epsilons make the only difference.
    assert written[key] == pytest.approx(expected, abs=1e-8), key
    assert f"{written[key]:.4f}" in run.stdout
  assert written["cider_d"] == pytest.approx(
      Cider().compute_score(gts, res)[0], abs=1e-9)
  assert written["rouge_l"] == pytest.approx(
      Rouge().compute_score(gts, res)[0], abs=1e-9)
  assert written["images"] == 30 and written["references"] == 150


def test_does_not_import_tensorflow(tmp_path):
  annotations, results = _write_files(str(tmp_path))
  code = (
      "import sys\n"
      "from captioner import cli\n"
      f"assert cli.main(['bleu', '--annotations', {annotations!r}, "
      f"'--results', {results!r}]) == 0\n"
      "heavy = {'tensorflow', 'tensorflow_model_analysis', 'apache_beam'}\n"
      "loaded = heavy & {m.split('.')[0] for m in sys.modules}\n"
      "assert not loaded, loaded\n")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120, cwd=REPO_ROOT)
  assert run.returncode == 0, run.stderr


def test_tokenizes_as_coco_caption(tmp_path, capsys):
  # Raw captions with case and punctuation score as their PTB-tokenized form.
  images = [(i, ([r.capitalize() + "." for r in refs], hyp.upper() + "!"))
            for i, (refs, hyp) in zip(IMAGE_IDS, IMAGES)]
  raw = _write_files(str(tmp_path), images=images)
  clean_dir = tmp_path / "clean"
  clean_dir.mkdir()
  clean = _write_files(str(clean_dir))
  raw_run = _main(capsys, "--annotations", raw[0], "--results", raw[1])
  clean_run = _main(capsys, "--annotations", clean[0], "--results", clean[1])
  assert raw_run[0] == clean_run[0] == 0
  assert raw_run[1] == clean_run[1]


def _write_split(folder, split, tokenize=lambda caption: caption):
  """COCO files of a coco_fixtures split (string image ids)."""
  os.makedirs(folder, exist_ok=True)
  annotations = {"images": [{"id": i} for i in split], "annotations": [
      {"id": f"{i}-{k}", "image_id": i, "caption": tokenize(caption)}
      for i, (_, refs) in split.items() for k, caption in enumerate(refs)]}
  results = [{"image_id": i, "caption": tokenize(hyp)}
             for i, (hyp, _) in split.items()]
  paths = (os.path.join(folder, "captions.json"),
           os.path.join(folder, "results.json"))
  for path, content in zip(paths, (annotations, results)):
    with open(path, "w") as f:
      json.dump(content, f)
  return paths


@pytest.mark.parametrize("seed,n_images", [
    pytest.param(*coco_fixtures.MAIN, id="main"),
    pytest.param(*coco_fixtures.HELD_OUT, id="held-out")])
def test_json_gives_pycocoevalcap_scores_on_raw_fixtures(tmp_path, capsys,
                                                         seed, n_images):
  """Issue 16's acceptance test for `captioner bleu --json`: raw captions
  with hyphens, clitics, abbreviations and punctuation score as
  pycocoevalcap scores them after coco-caption's PTBTokenizer; the same
  captions already tokenized score the same with --pretokenized."""
  split = coco_fixtures.caption_split(seed, n_images)
  expected = coco_fixtures.pycocoevalcap_scores(split)
  runs = {
      "raw": (_write_split(str(tmp_path / "raw"), split), []),
      "pretokenized": (_write_split(str(tmp_path / "tok"), split,
                                    ptb_tokenizer.ptb_tokenize),
                       ["--pretokenized"]),
  }
  for name, ((annotations, results), extra) in runs.items():
    out_json = str(tmp_path / f"{name}.json")
    code, out, err = _main(capsys, "--annotations", annotations, "--results",
                           results, "--json", out_json, *extra)
    assert code == 0, err
    with open(out_json) as f:
      written = json.load(f)
    assert set(expected) <= set(written)
    for key, value in expected.items():
      assert written[key] == pytest.approx(value, abs=1e-4), (name, key)
    assert written["images"] == n_images
    assert ("--pretokenized" in out) == (name == "pretokenized")
  # Raw captions tokenized as pretokenized text would score differently.
  annotations, results = runs["raw"][0]
  out_json = str(tmp_path / "raw_as_tokens.json")
  assert _main(capsys, "--annotations", annotations, "--results", results,
               "--json", out_json, "--pretokenized")[0] == 0
  with open(out_json) as f:
    assert json.load(f)["bleu_4"] != pytest.approx(expected["bleu_4"],
                                                   abs=1e-4)


def test_subset_scores_only_the_results_images(tmp_path, capsys):
  pairs = list(zip(IMAGE_IDS, IMAGES))
  results = [{"image_id": i, "caption": hyp} for i, (_, hyp) in pairs[:20]]
  annotations, results_path = _write_files(str(tmp_path), results=results)

  code, out, err = _main(capsys, "--annotations", annotations,
                         "--results", results_path)
  assert code == 2 and out == ""
  assert "10 of the 30 annotated images have no result" in err
  assert "--subset" in err

  code, out, err = _main(capsys, "--annotations", annotations,
                         "--results", results_path, "--subset")
  assert code == 0, err
  assert "scoring the 20 images that have a result" in err
  coco_bleu, _ = Bleu(4).compute_score(*_coco(pairs[:20]), verbose=0)
  printed = _printed_scores(out)
  for key, expected in zip(BLEU_KEYS, coco_bleu):
    assert printed[key] == pytest.approx(expected, abs=1e-4), key


@pytest.mark.parametrize("results, message", [
    ([{"image_id": 1, "caption": "a dog"}],
     "1 result(s) in {results} name image ids with no reference caption in "
     "{annotations}: 1"),
    ([{"image_id": IMAGE_IDS[0], "caption": "a dog"}] * 2,
     "1 image(s) have more than one result"),
    ({"image_id": IMAGE_IDS[0], "caption": "a dog"},
     "not a COCO results file"),
    ([{"image_id": IMAGE_IDS[0], "text": "a dog"}],
     "entry #0 has no string caption"),
    ([], "no results"),
])
def test_bad_results_are_errors(tmp_path, capsys, results, message):
  annotations, results_path = _write_files(str(tmp_path), results=results)
  code, out, err = _main(capsys, "--annotations", annotations,
                         "--results", results_path, "--subset")
  assert code == 2 and out == ""
  assert err.startswith("captioner bleu: error: ")
  assert message.format(results=results_path, annotations=annotations) in err


def test_missing_and_malformed_files_are_errors(tmp_path, capsys):
  annotations, results = _write_files(str(tmp_path))
  missing = str(tmp_path / "missing.json")
  code, _, err = _main(capsys, "--annotations", missing, "--results", results)
  assert code == 2 and f"annotations file not found: {missing}" in err
  code, _, err = _main(capsys, "--annotations", annotations, "--results",
                       missing)
  assert code == 2 and f"results file not found: {missing}" in err

  broken = tmp_path / "broken.json"
  broken.write_text('[{"image_id": 139, "caption": "a man"')
  code, _, err = _main(capsys, "--annotations", annotations, "--results",
                       str(broken))
  assert code == 2 and f"{broken}: not valid JSON" in err
  code, _, err = _main(capsys, "--annotations", results, "--results", results)
  assert code == 2 and "not a COCO captions file" in err


def test_errors_have_no_traceback(tmp_path):
  _, results = _write_files(str(tmp_path))
  run = subprocess.run(
      [CAPTIONER, "bleu", "--annotations", str(tmp_path / "nope.json"),
       "--results", results], capture_output=True, text=True, timeout=120)
  assert run.returncode == 2
  assert "annotations file not found" in run.stderr
  assert "Traceback" not in run.stderr
