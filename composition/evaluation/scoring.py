"""How an answer is scored: the paper's rules, exactly, and the studio's lenient letter rule.

Rules (one small class each, registered by name in ``RULES``):

- ``letter`` (the studio's rule, the default for MCUB-synth, whose experts answer
  "star (C)"): the first option letter of the answer (``score_answer``).
- ``first-char`` (the paper's MCUB and AVQA rule): ``text[:1] == gold``, where ``text`` is the
  decoded output stripped of whitespace, then of a trailing stop string, then of whitespace
  again (THUNLP-MT/ModelCompose ``modelcompose/eval/model_multimodal_qa_loader.py`` strips,
  ``modelcompose/eval/eval_avqa.py`` compares ``output['text'][:1]`` with the raw gold value).
  "The answer is C" is wrong under this rule.
- ``vqa-exact`` (the paper's MUSIC-AVQA rule, ``modelcompose/eval/eval_music_avqa.py``): both
  the output and the gold pass EvalAI's answer processor (``normalize_vqa_answer``), then
  must be equal.

The denominator is the number of outputs in every rule (the paper's scripts divide by the
number of lines of the predictions file).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import CompositionError

LETTERS = ("A", "B", "C", "D")


# --- the studio's letter rule --------------------------------------------------------
_UPPER_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])")
_LEADING_LOWER = re.compile(r"^[\s(\[{\"'*]*([a-d])(?:[\s.):\]}\"'*,;!]*)$|^[\s(\[{\"'*]*([a-d])[.):\]]")
_LOWER_PREFIX = re.compile(r"^[\s(\[{\"'*]*([a-d])[.):\]]")  # the second form of _LEADING_LOWER alone


def score_answer(text: str) -> str | None:
    """The option letter an answer chose, or None (the studio's lenient "first letter" rule).

    Exactly:
    1. A lowercase ``a``-``d`` counts only when it opens the answer and stands alone or is
       followed by ``.``, ``)``, ``:`` or ``]`` ("b", "b.", "(b)", "c) drum") -- a lowercase
       letter elsewhere is the article "a" or part of a word, never an option.
    2. Otherwise the first uppercase ``A``-``D`` that is a word of its own (no letter or
       digit touching it): "B", "B.", "(B)", "Answer: B", "The answer is C" all work, while
       the "A" of "Answer" or of "ABC" does not count.
    Whitespace around the answer is ignored; an answer with no such letter scores None
    (always wrong).
    """
    if not isinstance(text, str):
        raise CompositionError(f"an answer to score must be a string, got {type(text).__name__}.")
    text = text.strip()
    lower = _LEADING_LOWER.match(text)
    if lower:
        return (lower.group(1) or lower.group(2)).upper()
    upper = _UPPER_LETTER.search(text)
    return upper.group(1) if upper else None


# --- EvalAI's answer processor (VQA normalisation) -----------------------------------
# The tables and steps of EvalAIAnswerProcessor in LLaVA's llava/eval/m4c_evaluator.py (read
# at thunlp/LLaVA-UHD llava/eval/m4c_evaluator.py; ModelCompose's eval_music_avqa.py imports
# it), itself from facebookresearch/mmf. Reimplemented here, quirks included, because a
# score is only comparable when the normalisation is the same.
_CONTRACTIONS = dict(pair.split("=") for pair in (
    "aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've "
    "couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've "
    "hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's "
    "howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd "
    "itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't "
    "mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've "
    "neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at "
    "'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've "
    "shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd "
    "somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's "
    "someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll "
    "someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've "
    "somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've "
    "therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll "
    "theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've "
    "werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd "
    "wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's "
    "whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't "
    "wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll "
    "yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've "
    "you'dve=you'd've youll=you'll youre=you're youve=you've").split())
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The original's pattern starts with the typo "(?!<=\d)" (a look-ahead, not a look-behind):
# in effect "a period not followed by a digit". It is kept as written.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA = re.compile(r"(?<=\d)(\,)+(?=\d)")
# The original calls PERIOD_STRIP.sub("", text, re.UNICODE): re.UNICODE lands in the `count`
# argument, so at most 32 periods are removed. Kept, for identical scores.
_PERIOD_COUNT = int(re.UNICODE)


def normalize_vqa_answer(text: str) -> str:
    """EvalAI's VQA answer normalisation: lower case, punctuation, articles, number words, contractions."""
    if not isinstance(text, str):
        raise CompositionError(f"an answer to normalise must be a string, got {type(text).__name__}.")
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # Punctuation: dropped when it touches a space (or when a digit comma exists anywhere), else a space.
    out = text
    has_digit_comma = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCTUATION:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or has_digit_comma) else " ")
    out = _PERIOD.sub("", out, count=_PERIOD_COUNT)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


# --- rules ---------------------------------------------------------------------------
def strip_output(text: str, stop_strings: Sequence[str] = ()) -> str:
    """The loader's clean-up before scoring: strip, drop one trailing stop string, strip."""
    text = text.strip()
    for stop in stop_strings:
        if stop and text.endswith(stop):
            text = text[: -len(stop)]
            break
    return text.strip()


@dataclass(frozen=True)
class ScoringRule:
    """One way to score: ``predicted(text)`` is what counts of an answer, ``target(gold)`` what it must equal."""

    name: str
    description: str

    def check_gold(self, gold: str, where: str) -> None:
        """Raise a CompositionError when ``gold`` can never be matched under this rule."""
        if not isinstance(gold, str) or not gold:
            raise CompositionError(f"{where}: the gold answer {gold!r} is empty; every item needs its answer.")

    def predicted(self, text: str, stop_strings: Sequence[str] = ()) -> str | None:
        raise NotImplementedError

    def target(self, gold: str) -> str:
        return gold

    def settled(self, text: str, stop_strings: Sequence[str] = ()) -> bool:
        """Whether no text appended to ``text`` can change ``predicted``: generation may stop there
        (the runner's streaming stop). False unless a rule can tell; the whole answer is then made."""
        return False

    def correct(self, text: str, gold: str, stop_strings: Sequence[str] = ()) -> bool:
        predicted = self.predicted(text, stop_strings)
        return predicted is not None and predicted == self.target(gold)


class LetterRule(ScoringRule):
    def check_gold(self, gold: str, where: str) -> None:
        super().check_gold(gold, where)
        if score_answer(gold) is None:
            raise CompositionError(f"{where}: the gold answer {gold[:40]!r} has no option letter A-D, which the "
                                   "letter rule needs; use --scoring paper for open-ended answers.")

    def predicted(self, text: str, stop_strings: Sequence[str] = ()) -> str | None:
        return score_answer(strip_output(text, stop_strings))

    def target(self, gold: str) -> str:
        return score_answer(gold) or ""

    def settled(self, text: str, stop_strings: Sequence[str] = ()) -> bool:
        """Settled once an upper-case option letter stands with a character after it that is not a letter
        or digit ("star (C)" after the ")"): a later character cannot undo that match, and no earlier
        candidate can become one. A lower-case leading letter ("b)") is settled by the same reasoning."""
        t = strip_output(text, stop_strings)
        if t != text.strip():  # a trailing stop string: more text could make it ordinary text again
            return False
        if _LOWER_PREFIX.match(t):  # "b)" and the like: decided by the text's start alone
            return True
        if _LEADING_LOWER.match(t):  # "b" alone matches only while nothing else follows
            return False
        upper = _UPPER_LETTER.search(t)
        return upper is not None and upper.end() < len(t)


class FirstCharRule(ScoringRule):
    def predicted(self, text: str, stop_strings: Sequence[str] = ()) -> str | None:
        return strip_output(text, stop_strings)[:1]

    def settled(self, text: str, stop_strings: Sequence[str] = ()) -> bool:
        """Settled once the stripped text has a first character and is not the start of a stop string
        (a stop string at the very end is dropped before scoring, which could empty the text)."""
        t = text.strip()
        return bool(t) and not any(s and s.startswith(t) for s in stop_strings)

    # The paper compares with the gold value as it is in the answers file: no processing.


class VqaExactRule(ScoringRule):
    def predicted(self, text: str, stop_strings: Sequence[str] = ()) -> str | None:
        return normalize_vqa_answer(strip_output(text, stop_strings))

    def target(self, gold: str) -> str:
        return normalize_vqa_answer(gold)


RULES: dict[str, ScoringRule] = {
    "letter": LetterRule("letter", "first option letter A-D anywhere sensible in the answer (studio, lenient)"),
    "first-char": FirstCharRule("first-char", "first character of the stripped output equals the gold (paper: MCUB, AVQA)"),
    "vqa-exact": VqaExactRule("vqa-exact", "EvalAI-normalised output equals the normalised gold (paper: MUSIC-AVQA)"),
}

# --- task families -------------------------------------------------------------------
# family -> the paper's rule for it. "multiple-choice" / "open-ended" are files whose name
# says nothing: the answers decide (option letters, or anything else).
FAMILIES: dict[str, str] = {
    "mcub": "first-char", "avqa": "first-char", "music-avqa": "vqa-exact", "mcub-synth": "first-char",
    "multiple-choice": "first-char", "open-ended": "vqa-exact",
}
SCORING_CHOICES = ("paper", "letter")


def detect_family(names: Sequence[str], golds: Sequence[str], synth: bool) -> tuple[str, str]:
    """(family, how it was detected) from the file names, the items' own marks and the answers.

    ``names``: the question file's and the answers file's names (in that order). The
    released files are ``MCUB-4.json`` / ``MCUB-3-*.json`` (+ ``MCUB-answer.json``),
    ``avqa-test_mm_*.json`` and ``music-avqa-test_mm_*.json``
    (``scripts/model_composition/test/{MCUB-3,MCUB-4,avqa,music_avqa_*}.sh``).
    """
    if synth:
        return "mcub-synth", "its items carry MCUB-synth meta records"
    for name in names:
        low = name.lower().replace("_", "-")
        if "mcub-synth" in low:
            return "mcub-synth", f"file name {name!r}"
        if "music-avqa" in low:
            return "music-avqa", f"file name {name!r}"
        if "avqa" in low:
            return "avqa", f"file name {name!r}"
        if "mcub" in low:
            return "mcub", f"file name {name!r}"
    if golds and all(g.strip() in LETTERS for g in golds):
        return "multiple-choice", "every gold answer is an option letter A-D"
    return "open-ended", "the gold answers are not all option letters"


def rule_for(scoring: str, family: str) -> ScoringRule:
    """``scoring`` "letter" is the letter rule everywhere; "paper" is the family's rule."""
    if scoring not in SCORING_CHOICES:
        raise CompositionError(f"unknown scoring {scoring!r}; expected one of {SCORING_CHOICES}.")
    if family not in FAMILIES:
        raise CompositionError(f"unknown task family {family!r}; expected one of {sorted(FAMILIES)}.")
    return RULES["letter"] if scoring == "letter" else RULES[FAMILIES[family]]


def default_scoring(family: str) -> str:
    """MCUB-synth is scored with the letter rule (its experts answer "star (C)"), the rest as the paper does."""
    return "letter" if family == "mcub-synth" else "paper"


def named_option(answer: str, options: Sequence[str]) -> str | None:
    """The option the answer names first ("cone (C)" -> "cone"), as a whole word, else None: what an
    MCUB-synth answer recognised, apart from the letter it writes (``python -m training.diagnose answers``
    and the interference curve read it)."""
    best: tuple[int, str] | None = None
    for option in options:
        match = re.search(rf"(?<![a-z]){re.escape(option.lower())}(?![a-z])", answer.lower())
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), option)
    return best[1] if best else None
