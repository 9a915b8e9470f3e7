"""coco-caption's caption tokenizer, in pure Python (no Java at run time).

coco-caption (pycocoevalcap/tokenizer/ptbtokenizer.py) runs

    java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer \
        -preserveLines -lowerCase

on all captions, one per line, then drops the tokens in its PUNCTUATIONS list.
This module re-implements the Stanford PTBLexer (a JFlex scanner) rules that
matter for English captions -- the macros and rules of CoreNLP's PTBLexer.flex
of that era, with 3.4.1's behaviour checked token for token against the real
jar (tests/unit/test_coco_metrics.py) -- and then applies the same
punctuation filter, so ``ptb_tokenize(caption)`` is what coco-caption scores.

How the scanner works, as JFlex does: at each position every rule is tried,
the longest match wins (a rule's trailing context ``r1/r2`` counts towards
its length but is not consumed), and ties go to the earlier rule.

Things coco-caption does that look odd but are reproduced because they change
scores: brackets become -lrb- / -rrb- / -lsb- / -lcb- ... after lowercasing,
and its PUNCTUATIONS list only has the upper-case forms, so they stay; runs
like "!!" or "?!" are one token and stay; a period after an abbreviation or a
single letter stays on it ("st.", "mr.", "etc.", "u.s.", "x."), mid-word
apostrophes split ("rock 'n' roll", "x ' y"); "cannot", "gonna", "gotta",
"wanna", "lemme", "gimme" are split in two.

Known differences from running the jar over a whole file: coco-caption
writes every caption on its own line of one file, so the rare rules whose
trailing context looks across the line break can see the next caption; and
carriage returns and other Unicode line breaks inside a caption (which
coco-caption does not replace) start a new line there and shift every later
caption.  Here each caption is tokenized on its own and those characters are
spaces.  Characters the 3.4.1 lexer cannot tokenize (most emoji, control
characters) are deleted, as its default "firstDelete" does.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Tuple

# pycocoevalcap/tokenizer/ptbtokenizer.py: PUNCTUATIONS.
PUNCTUATIONS = frozenset([
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!",
    ",", ":", "-", "--", "...", ";"
])


def ci(literal_regex: str) -> str:
  """A caseless piece of pattern (JFlex %caseless affects literals only)."""
  return f"(?i:{literal_regex})"


# --- Macros (PTBLexer.flex names) ------------------------------------------
# [:letter:] is Java's Character.isLetter; [^\W\d_] is Python's closest, minus
# the non-decimal numerics (superscripts, vulgar fractions) that Python counts.
LETTER = r"(?:(?![\u00B2\u00B3\u00B9\u00BC-\u00BE\u2070-\u209F\u2150-\u218F])[^\W\d_])"
DIGIT = r"\d"
SPLET = r"&[aeiouAEIOU](?:acute|grave|uml);"
SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
SPACES = SPACE + "+"
NEWLINE = r"(?:\r\n|\r|\n|\u2028|\u2029|\u000B|\u000C|\u0085)"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
SGML = r"<\/?[A-Za-z!?][^>\r\n]*>"
SENTEND = f"{SPACENL}(?:{SPACENL}|[A-Z]|{SGML})"
WORD_EXTRA = (
    "\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F"
    "\u0370-\u037D\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF"
    "\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2"
    "\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670"
    "\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F"
    "\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E"
    "\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8"
    "\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F"
    "\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD"
    "\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A"
    "\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD")
WORD = f"(?:{LETTER}|{SPLET}|[{WORD_EXTRA}])+"
APOS = r"(?:['\u0092\u2019]|&apos;)"
APOSETCETERA = f"(?:{APOS}|[\u0091\u2018\u201B])"
LETTER_OR_DIGIT = f"(?:{LETTER}|{DIGIT})"
HYPHEN = r"[-_\u058A\u2010\u2011]"
THING_PART = f"(?:[dDoOlL]{APOSETCETERA}{LETTER_OR_DIGIT})?{LETTER_OR_DIGIT}+"
THING = f"{THING_PART}(?:{HYPHEN}{THING_PART})*"
THINGA = r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"
THING3 = (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}"
          r"(?:\\?\/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}")
ACRO = (r"(?:[A-Za-z](?:\.[A-Za-z])+|" + ci(r"(?:Canada|Sino|Korean|EU|Japan|non)-U\.S") +
        "|" + ci(r"U\.S\.-(?:U\.K|U\.S\.S\.R)") + ")")
HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{ACRO}\\.))+"
REDAUX = f"{APOS}(?:[msdMSD]|{ci('re|ve|ll')})"
SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
SREDAUX = f"{ci('n')}{APOSETCETERA}{ci('t')}"
APOWORD = "(?:" + "|".join([
    # Longest alternatives first: Python's alternation is first-match.
    f"{LETTER}+[aeiouyAEIOUY]{APOSETCETERA}[aeiouA-Z]{LETTER}*",
    f"[A-HJ-XZn]{APOSETCETERA}{LETTER}{{2}}{LETTER}*",
    ci(r"cont'd\.?"), ci("nor'easter"), ci("s'mores"), ci("c'mon"),
    ci("ev'ry"), ci("li'l"), ci("nat'l"), ci("e'er"),
    f"{ci('Dunkin')}{APOS}", f"{ci('somethin')}{APOS}", f"{ci('ol')}{APOS}",
    f"{APOS}{ci('cause')}", f"{APOS}{ci('till?')}", f"{APOS}[2-9]0{ci('s')}",
    f"{APOS}{ci('em')}", f"{APOS}{ci('n')}{APOS}?", f"[lLdDjJ]{APOS}",
]) + ")"
# 3.4.1 splits 'twas / 'tis into 't + was / is (straight apostrophe only).
APOWORD_T = "'" + ci("t")
APOWORD2 = f"{ci('y')}{APOS}"
FULLURL = r"https?:\/\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
LIKELYURL = (r"(?:(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|"
             r"(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},\-_$]+\.)+(?:com|net|org|edu)))"
             r"(?:\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?")
EMAIL = (r"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0]*@"
         r"(?:[^ \t\n\f\r\"<>|().\u00A0]+\.)*[^ \t\n\f\r\"<>|().\u00A0]+")
TWITTER = f"(?:@[a-zA-Z_][a-zA-Z_0-9]*|#{WORD})"
DATE = f"{DIGIT}{{1,2}}[\\-\\/]{DIGIT}{{1,2}}[\\-\\/]{DIGIT}{{2,4}}"
NUM = f"(?:{DIGIT}*(?:[.:,\u00AD\u066B\u066C]{DIGIT}+)+|{DIGIT}+)"
NUMBER = f"[\\-+]?{NUM}"
SUBSUPNUM = (r"[\u207A\u207B\u208A\u208B]?"
             r"(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)")
FRAC = f"(?:{DIGIT}{{1,4}}[- \u00A0])?{DIGIT}{{1,4}}(?:\\\\?\\/|\u2044){DIGIT}{{1,4}}"
FRAC2 = "[\u00BC\u00BD\u00BE\u2153-\u215E]"
DOLSIGN = r"(?:[A-Z]*\$|#)"
DOLSIGN2 = ("[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4"
            "\uFFE0\uFFE1\uFFE5\uFFE6]")
ABMONTH = ci("Sept|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Oct|Nov|Dec")
ABDAYS = ci("Tues|Thurs|Mon|Tue|Wed|Thu|Fri")
ABSTATE = ("(?:" + ci("Calif|Colo|Conn|Okla|Minn|Mich|Mont|Tenn|Penn|Ariz|Kans?|"
                      "Wisc?|Ala|Dak|Del|Fla|Ind|Neb|Nev|Tex|Wyo|Ga|Ky|Md|Mo|"
                      "Va|Vt") + "|L" + ci("a") + "|P" + ci("a") +
           "|A" + ci("rk") + "|I" + ci("ll") + "|M" + ci("ass") + "|M" +
           ci("iss") + "|O" + ci("re") + "|W" + ci("ash") + ")")
ACRO_NEXT_WORDS = "|".join(w[0] + ci(re.escape(w[1:])) for w in (
    "About According Additionally After An A As At But Earlier He Her Here "
    "However If In It Last Many More Mr. Ms. Now Once One Other Our She Since "
    "So Some Such That The Then There These They This We When While What Yet "
    "You").split())
ABTITLE = ("(?:" + ci("Messrs|Lieut|Attys?|Profs?|Supts?|Capt|Brig|Pres|Co?mdr|"
                      "Mrs|Drs?|Sens?|Reps?|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Ave|"
                      "Hon|Pfc|Spc|Det|Col|Gen|Mr|Ms|Lt|Mt|Ste?") +
           "|M" + ci("iss") + ")")
ABPTIT = ci(r"Bros|Blvd|Esq|(?:Ed|Ph)\.D|Jr|Sr|Rd")
ABCOMP = ci("Bancorp|Corp|Assn|Univ|Intl|Pp?tys?|Inc|Cos?|Ltd|Plc|Bhd|Sys")
ABCOMP2 = ci("Invt|Elec|Natl|M[ft]g")
ABNUM = ci("tel|est|ext|sq")
# Kept with their period only before a number ("no. 5"), 3.4.1's ABBREV3.
ABBREV3 = ci(r"(?:Prop|Nos?)\.")
ABBREV1 = (f"(?:{ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|"
           + ci("etc|al|seq") + r")\.")
ABBREV4 = (f"(?:{ACRO}|{ci('a.k.a'.replace('.', chr(92) + '.'))}|{ABTITLE}|"
           f"{ABCOMP2}|{ci('Alex|TREAS|Dept|Cie|Jos|vs|Wm|cf|Ph|ft')}|[A-Za-z])")
ABBREV2 = ABBREV4 + r"\."
ACRONYM = ACRO + r"\."
PHONE = (r"(?:(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?"
         r"[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}|"
         r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5})")
HYPHENS = r"\-+"
LDOTS = r"(?:\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026])"
INSENTP = r"[,;:\u3001]"
QUOTES = (f"(?:''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092"
          f"\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{{1,2}}|{APOS})")
DBLQUOT = r"(?:\"|&quot;)"
TBSPEC = ("(?:" + ci(r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|"
                     r"S(?:&|&amp;)P-500|S(?:&|&amp;)Ls") +
          f"|{ci('Cap')}{APOS}{ci('n')}|{ci('c')}{APOS}{ci('est')})")
TBSPEC2 = f"{APOS}[0-9][0-9]"
MISCSYMBOL = (
    "[+%&~\\^|\\\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3"
    "\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4"
    "\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D"
    "\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017"
    "\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F"
    "\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB"
    "\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")
# What the scanner may see after a caption's end: coco-caption's file has the
# next caption there, and COCO captions mostly start with "A ..." (it only
# matters for a final single letter + period: "letter x." -> "x").
ASSUMED_NEXT_CAPTION = "A "

# Words 3.4.1 splits after their third letter ("gon na").
ASSIMILATIONS = ("gonna", "gotta", "wanna", "lemme", "gimme")

# --- Token normalisation (PTB3 escaping, as the defaults of 3.4.1) ----------


def _latex_quotes(token: str, probably_left: bool) -> str:
  if probably_left:
    token = re.sub(r"&apos;|'", "`", token)
    token = re.sub(r"\"|&quot;", "``", token)
  else:
    token = re.sub(r"&apos;|'", "'", token)
    token = re.sub(r"\"|&quot;", "''", token)
  token = re.sub("[\u0091\u2018\u201B\u2039]", "`", token)
  token = re.sub("[\u0092\u2019\u203A]", "'", token)
  token = re.sub("[\u0093\u201C\u00AB]", "``", token)
  return re.sub("[\u0094\u201D\u00BB]", "''", token)


def _left_quote(t: str) -> str:
  return _latex_quotes(t, True)


def _right_quote(t: str) -> str:
  return _latex_quotes(t, False)


def _soft(t: str) -> str:
  return t.replace("\u00AD", "")


def _nbsp(t: str) -> str:
  return t.replace(" ", "\u00A0")


def _fractions(t: str) -> str:
  for char, text in (("\u00BC", "1/4"), ("\u00BD", "1/2"), ("\u00BE", "3/4"),
                     ("\u2153", "1/3"), ("\u2154", "2/3")):
    t = t.replace(char, text)
  return t


def _currency(t: str) -> str:
  t = t.replace("\u00A2", "cents").replace("\u00A3", "#")
  return re.sub("[\u0080\u00A4\u20A0\u20AC]", "$", t)


def _hyphens(t: str) -> str:
  return "--" if 3 <= len(t) <= 4 else t


def _brackets(t: str) -> str:
  return {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-",
          "{": "-LCB-", "}": "-RCB-"}[t]


def _phone(t: str) -> str:
  return _nbsp(t).replace("(", "-LRB-").replace(")", "-RRB-")


def _amp(t: str) -> str:
  return re.sub("(?i:&amp;)", "&", t)


def _same(t: str) -> str:
  return t


_SKIP = None  # whitespace: no token
_DELETE = "delete"  # untokenizable: no token


class _Rule:
  """One scanner rule: pattern (with optional trailing context), action."""

  def __init__(self, pattern: str, action=_same, trailing: Optional[str] = None,
               keep: Optional[int] = None, rescan_last: bool = False):
    self.pattern = re.compile(f"(?P<main>{pattern})" +
                              (f"(?={trailing})" if trailing else ""))
    self.trailing = re.compile(trailing) if trailing else None
    self.action = action
    # keep=k: the token is only the first k characters; scanning resumes
    # after them (JFlex yypushback, as for "cannot" -> "can" + "not").
    self.keep = keep
    # rescan_last: the whole match is the token, but its last character (a
    # period) is scanned again, so a sentence-final abbreviation like "etc."
    # also yields a "." token.
    self.rescan_last = rescan_last

  def match(self, text: str, pos: int) -> Optional[Tuple[int, int]]:
    """(consumed length, length that competes for the longest match)."""
    m = self.pattern.match(text, pos)
    if not m:
      return None
    end = m.end("main")
    total = end - pos
    if self.trailing is not None:
      total += self.trailing.match(text, end).end() - end
    return end - pos, total


# Rule order is PTBLexer.flex's: it only breaks ties between equal lengths.
_RULES: List[_Rule] = [
    _Rule(ci("cannot"), keep=3),  # "can" + "not"
    _Rule(SGML, _nbsp),
    _Rule(ci("&(?:MD|mdash|ndash);") + "|[\u0096\u0097\u2013\u2014\u2015]",
          lambda t: "--"),
    _Rule(ci("&amp;"), _amp),
    _Rule(ci("&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);")),
    _Rule("|".join(ci(w) for w in ASSIMILATIONS), keep=3),
    _Rule(WORD, _soft, trailing=REDAUX),
    _Rule(SWORD, _soft, trailing=SREDAUX),
    _Rule(WORD, _soft),
    _Rule(APOWORD),
    _Rule(APOWORD_T, trailing=ci("was|is")),
    _Rule(APOWORD2, trailing=LETTER),
    _Rule(FULLURL),
    _Rule(LIKELYURL),
    _Rule(EMAIL),
    _Rule(TWITTER),
    _Rule(REDAUX, _right_quote, trailing="[^A-Za-z]"),
    _Rule(SREDAUX, _right_quote),
    _Rule(DATE),
    _Rule(NUMBER, _soft),
    _Rule(SUBSUPNUM),
    _Rule(FRAC, _nbsp),
    _Rule(FRAC2, _fractions),
    _Rule(TBSPEC, _amp),
    _Rule(THING3),
    _Rule(DOLSIGN),
    _Rule(DOLSIGN2, _currency),
    # Before a word that usually starts a sentence, an acronym's period is
    # doubled ("u.s. .") and a single letter's is split off ("a .").
    _Rule(ACRONYM, trailing=f"{SPACENL}+(?:{ACRO_NEXT_WORDS}){SPACENL}",
          rescan_last=True),
    _Rule(r"[A-Za-z]\.", trailing=f"{SPACENL}+(?:{ACRO_NEXT_WORDS}){SPACENL}",
          keep=1),
    _Rule(ABBREV1, trailing=SENTEND, rescan_last=True),
    _Rule(ABBREV1),
    _Rule(ABBREV2),
    _Rule(ABBREV3, trailing=f"{SPACE}?{DIGIT}"),
    _Rule(ABBREV4, trailing=SPACE),
    _Rule(ACRO, trailing=SPACENL),
    _Rule(TBSPEC2, trailing=SPACENL),
    _Rule(WORD + r"\.", _soft, trailing=INSENTP),
    _Rule(PHONE, _phone),
    _Rule(DBLQUOT, _left_quote, trailing="[A-Za-z0-9$]"),
    _Rule(DBLQUOT, _right_quote),
    _Rule("<<|>>"),
    _Rule(r"[\[\]{}()]", _brackets),
    _Rule(HYPHENS, _hyphens),
    _Rule(LDOTS, lambda t: "..."),
    _Rule(r"@+|#+|_+"),
    _Rule(r"\*+|(?:\\\*){1,3}"),
    _Rule(INSENTP),
    _Rule(r"[?!]+"),
    _Rule("[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]"),
    _Rule("="),
    _Rule(r"\/"),
    _Rule(HTHING + r"\.", _soft, trailing=INSENTP),
    _Rule(HTHING, _soft),
    _Rule(THING + r"\.", trailing=INSENTP),
    _Rule(THING),
    # Words glued by periods ("mr.smith", "calif.cannot") stay one token in
    # 3.4.1, found against the jar; the final period is not included.
    _Rule(f"{LETTER}{LETTER_OR_DIGIT}*(?:\\.(?:{LETTER}|[{WORD_EXTRA}])+)+"),
    _Rule(THINGA + r"\.", _amp, trailing=INSENTP),
    _Rule(THINGA, _amp),
    _Rule("'", _left_quote, trailing="[A-Za-z][^ \t\n\r\u00A0]"),
    _Rule(REDAUX, _right_quote),
    _Rule(QUOTES, _right_quote),
    _Rule(MISCSYMBOL),
    _Rule("[<>]"),
    _Rule(f"\\x00|{SPACES}|[\u200B\u200E\u200F\uFEFF]|{NEWLINE}|&nbsp;",
          _SKIP),
]

# Fast path: a run of ASCII letters ending at whitespace or the end is one
# WORD token unless it is one of the words with a rule of their own.
_PLAIN_WORD = re.compile(r"[A-Za-z]+(?=[ \t]|\Z)")
_SPECIAL_WORDS = frozenset(["cannot", *ASSIMILATIONS])


def ptb_tokens(text: str, lowercase: bool = True) -> List[str]:
  """Stanford PTBTokenizer's tokens of one line of text (before coco-caption
  removes punctuation), lowercased as ``-lowerCase`` does."""
  tokens: List[str] = []
  # In coco-caption's file every caption but the last is followed by a line
  # break, which trailing contexts (e.g. after "'ve") can see.
  n = len(text)
  text += "\n" + ASSUMED_NEXT_CAPTION
  pos = 0
  while pos < n:
    plain = _PLAIN_WORD.match(text, pos)
    if plain and plain.group().lower() not in _SPECIAL_WORDS:
      tokens.append(plain.group())
      pos = plain.end()
      continue
    best, best_total, best_len = None, 0, 0
    for rule in _RULES:
      found = rule.match(text, pos)
      if found and found[1] > best_total:
        best, best_len, best_total = rule, found[0], found[1]
    if best is None:  # untokenizable character: 3.4.1 deletes it
      pos += 1
      continue
    if best.keep is not None:
      best_len = best.keep
    if best.action is not _SKIP:
      tokens.append(best.action(text[pos:pos + best_len]))
    pos += best_len - (1 if best.rescan_last else 0)
  if lowercase:
    tokens = [t.lower() for t in tokens]
  return tokens


def ptb_tokenize(text: str, pretokenized: bool = False) -> str:
  """A caption as coco-caption scores it: PTB-tokenized, lowercased, with its
  punctuation tokens removed, tokens joined by single spaces.

  ``pretokenized=True`` is for text that is already tokenized (e.g. a
  model's decoded tokens): only whitespace is normalised, nothing is split,
  lowercased or removed.
  """
  if pretokenized:
    return " ".join(text.split())
  # coco-caption replaces newlines in a caption by spaces before tokenizing.
  text = text.replace("\n", " ")
  return " ".join(t for t in ptb_tokens(text) if t not in PUNCTUATIONS)


def ptb_tokenize_many(captions: Iterable[str],
                      pretokenized: bool = False) -> List[str]:
  """:func:`ptb_tokenize` of each caption, in order."""
  return [ptb_tokenize(c, pretokenized) for c in captions]
