"""Retention: what a composition keeps of the base LLM's text-only skills, scored against the base alone.

MergeBench scores a merge on what its base could do before, not only on the new task. Here the
fixed text set (``RETENTION_SET``) has four parts, every question asked with no input:

- ``lookup``: the option-letter lookup (MCUB's option question with the answer's name given,
  "star (", is the next token the letter printed before "star"?), as ``training/lookup.py``
  measures it (same questions for the same seed: options from the synthetic world's categories);
- ``chat``: the README's general-chat checks (the capital of France, hello in French, 12 + 7,
  three primary colours, two tips for sleeping better);
- ``facts``: short factual questions; ``arithmetic``: one-step sums and differences.

An open answer is right when it names the expected word (or number); every variant and the base
(``VariantSpec.parse("base")``: no delta on any token) answer the same questions in one batch.
Retention of a variant is the share of the items the base gets right that the variant still gets
right; the paired counts and the exact McNemar p-value against the base say whether it differs.

    report = measure_retention(cm, ["DAMC", "NaiveMC"])
    report.to_json()["variants"]["DAMC"]   # {"accuracy", "kept", "retention", "gained", "vs_base": {...}, "parts": {...}}
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from modalities.checks import check_int

from ..errors import CompositionError
from .scoring import LETTERS

# The synthetic world's categories (training/scene.py CATEGORIES; the engine side does not import training).
WORLD_CATEGORIES = ("ball", "cube", "cone", "ring", "star", "drum", "cross", "diamond")
MCUB_QUESTION = "What do these inputs have in common?"  # training/instructions.py, word for word
LETTER_INSTRUCTION = "Answer with the option's letter."
LOOKUP_ITEMS = 48
OPEN_NEW_TOKENS = 48  # the base is verbose: its answer may come after a sentence of preamble
BATCH = 8  # questions per generate call (each runs every variant)


@dataclass(frozen=True)
class TextItem:
    """One open question and what a right answer names: any of ``accept`` (words), or the number ``number``."""

    part: str
    question: str
    accept: tuple[str, ...] = ()
    number: int | None = None
    need: int = 1  # how many of ``accept`` a right answer names (three primary colours: 3)
    operands: tuple[int, ...] = ()  # numbers the question gives, which an answer may repeat ("1 + 1 = 2")

    def __post_init__(self) -> None:
        if not self.question.strip() or (not self.accept and self.number is None):
            raise CompositionError(f"retention item {self.question!r} needs a question and what a right answer names.")

    def correct(self, answer: str) -> bool:
        text = answer.lower()
        if self.number is not None:
            return stated_number(text, self.operands) == self.number
        words = set(re.findall(r"[a-zà-ÿ]+", text))
        return sum(1 for a in self.accept if a in words) >= self.need


NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                            "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())}


_NUMBER = re.compile(r"\d+|[a-z]+")


def numbers_in(text: str) -> list[int]:
    """Every number an answer states, in order, in digits or words ("Nineteen." -> [19])."""
    out = []
    for token in _NUMBER.findall(text.lower()):
        if token.isdigit():
            out.append(int(token))
        elif token in NUMBER_WORDS:
            out.append(NUMBER_WORDS[token])
    return out


def stated_number(text: str, operands: Sequence[int] = ()) -> int | None:
    """The number an answer gives as its result: its first number once the question's own numbers are set
    aside (each once: "1 + 1 = 2" -> 2, "12 + 7 = 9" -> 9, "The answer is 7." -> 7); None when there is none."""
    numbers = numbers_in(text)
    for operand in operands:
        if operand in numbers:
            numbers.remove(operand)
    return numbers[0] if numbers else None


CHAT = (
    TextItem("chat", "What is the capital of France?", ("paris",)),
    TextItem("chat", "Give me two tips for sleeping better.", ("sleep", "bed", "bedtime", "schedule", "routine", "caffeine",
                                                                "screen", "screens", "dark", "relax")),
    TextItem("chat", "How do you say hello in French?", ("bonjour", "salut")),
    TextItem("chat", "What is 12 + 7?", number=19, operands=(12, 7)),
    TextItem("chat", "Name three primary colours.", ("red", "blue", "yellow", "green"), need=3),
)
FACTS = (
    TextItem("facts", "What is the capital of Italy?", ("rome",)),
    TextItem("facts", "What is the capital of Japan?", ("tokyo",)),
    TextItem("facts", "What is the capital of Germany?", ("berlin",)),
    TextItem("facts", "What is the capital of Spain?", ("madrid",)),
    TextItem("facts", "How many days are there in a week?", number=7),
    TextItem("facts", "What colour is the sky on a clear day?", ("blue",)),
    TextItem("facts", "What is the largest planet in our solar system?", ("jupiter",)),
    TextItem("facts", "What is the opposite of hot?", ("cold",)),
    TextItem("facts", "How many legs does a spider have?", number=8),
    TextItem("facts", "What do bees make?", ("honey",)),
    TextItem("facts", "What is frozen water called?", ("ice",)),
    TextItem("facts", "Which animal says moo?", ("cow", "cows")),
)
ARITHMETIC = tuple(TextItem("arithmetic", f"What is {a} {op} {b}?", number=a + b if op == "+" else a - b, operands=(a, b))
                   for a, op, b in ((2, "+", 2), (3, "+", 5), (10, "-", 4), (6, "+", 1), (9, "-", 3), (5, "+", 5),
                                    (7, "+", 2), (1, "+", 1), (8, "-", 5), (4, "+", 3)))
RETENTION_SET: tuple[TextItem, ...] = CHAT + FACTS + ARITHMETIC
PARTS = ("lookup", "chat", "facts", "arithmetic")


def lookup_questions(n: int = LOOKUP_ITEMS, seed: int = 0) -> list[tuple[str, str, int]]:
    """``n`` (question, given name, letter index) of the lookup, drawn as ``training.lookup`` draws them."""
    import numpy as np

    check_int(n, "n", 1, error=CompositionError)
    rng = np.random.default_rng([seed, 41])
    out = []
    for _ in range(n):
        options = [WORLD_CATEGORIES[i] for i in rng.choice(len(WORLD_CATEGORIES), size=len(LETTERS), replace=False)]
        k = int(rng.integers(len(LETTERS)))
        question = f"{MCUB_QUESTION} " + " ".join(f"{l}. {o}" for l, o in zip(LETTERS, options)) + f" {LETTER_INSTRUCTION}"
        out.append((question, options[k], k))
    return out


@dataclass
class RetentionReport:
    """Per variant (``base`` first) and item: right or wrong, with the answers given."""

    variants: tuple[str, ...]  # the compared variants, without the base
    items: list[dict]  # {"part", "question", "answers": {variant: text}, "correct": {variant: bool}}
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def outcomes(self, variant: str, part: str | None = None) -> list[bool]:
        return [it["correct"][variant] for it in self.items if part is None or it["part"] == part]

    def summary(self, variant: str, part: str | None = None) -> dict:
        """Accuracy, and against the base: items kept (right with both), lost, gained, retention, McNemar."""
        from .stats import compare_paired

        mine, base = self.outcomes(variant, part), self.outcomes("base", part)
        pair = compare_paired(mine, base)
        base_right = pair.both + pair.only_b
        return {"items": len(mine), "accuracy": round(sum(mine) / len(mine), 4), "kept": pair.both, "lost": pair.only_b,
                "gained": pair.only_a, "base_right": base_right,
                "retention": round(pair.both / base_right, 4) if base_right else None,
                "p_value_vs_base": float(f"{pair.p_value:.4g}")}

    def to_json(self) -> dict:
        from .stats import bootstrap_interval

        out = {"parts": {p: sum(1 for it in self.items if it["part"] == p) for p in PARTS}, "base": {}, "variants": {},
               "seconds": round(self.seconds, 3)}
        base = self.outcomes("base")
        low, high = bootstrap_interval(base, resamples=4000)
        out["base"] = {"accuracy": round(sum(base) / len(base), 4), "ci95": [round(low, 4), round(high, 4)],
                       "parts": {p: round(sum(o := self.outcomes("base", p)) / len(o), 4) for p in PARTS if self.outcomes("base", p)}}
        for v in self.variants:
            s = self.summary(v)
            low, high = bootstrap_interval(self.outcomes(v), resamples=4000)
            s["ci95"] = [round(low, 4), round(high, 4)]
            s["parts"] = {p: self.summary(v, p) for p in PARTS if self.outcomes(v, p)}
            out["variants"][v] = s
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def format(self) -> list[str]:
        data = self.to_json()
        b = data["base"]
        lines = [f"retention: {len(self.items)} text-only items ({', '.join(f'{p} {n}' for p, n in data['parts'].items())}), "
                 f"scored against the base alone",
                 f"  {'base':<24} {100 * b['accuracy']:5.1f} % right  ("
                 + ", ".join(f"{p} {100 * a:.0f} %" for p, a in b["parts"].items()) + ")"]
        for v, s in data["variants"].items():
            kept = "n/a" if s["retention"] is None else f"{100 * s['retention']:.0f} %"
            lines.append(f"  {v:<24} {100 * s['accuracy']:5.1f} % right [{100 * s['ci95'][0]:.0f}, {100 * s['ci95'][1]:.0f}]; "
                         f"keeps {s['kept']}/{s['base_right']} of the base's ({kept}), loses {s['lost']}, gains {s['gained']}; "
                         f"McNemar vs base p = {s['p_value_vs_base']:.3g}  ("
                         + ", ".join(f"{p} {100 * ps['accuracy']:.0f} %" for p, ps in s["parts"].items()) + ")")
        return lines


def measure_retention(cm, variants: Sequence[str] | None = None, *, lookup_items: int = LOOKUP_ITEMS, seed: int = 0,
                      items: Sequence[TextItem] = RETENTION_SET, max_new_tokens: int = OPEN_NEW_TOKENS,
                      coefficients=None, progress: Callable[[int, int], None] | None = None) -> RetentionReport:
    """Ask the retention set of the base and every variant (no inputs), in batches through the engine's batch entry.

    Args:
        cm: a ComposedModel (or a ``subset`` view); nothing may be materialized (the base must be the base).
        variants: names to compare with the base (default: every composition and expert of a text-only request).
        lookup_items: lookup questions (0: none); seed: their draw.
        items: the open questions; max_new_tokens: their answer length (greedy).
        coefficients: the variants' λ/μ (``Coefficients``; default the paper's: λ = 1/K over every expert,
            since no question has an input).
    """
    import time

    from ..composer import RowRequest
    from ..generate import GenerationConfig
    from ..variants import BASE

    if getattr(cm, "materialized_variant", None) is not None:
        raise CompositionError("the model has a variant written into its weights; retention needs the base as it is. "
                               "Dematerialize first (or use a fresh model).")
    check_int(lookup_items, "lookup_items", 0, error=CompositionError)
    names = list(variants) if variants else cm.plan(set(), experts_without_input=True).names
    names = [n for n in names if n != BASE]
    plan = cm.plan(set(), [BASE, *names], coefficients, experts_without_input=True)
    order = [rv.name for rv in plan.variants]
    start = time.perf_counter()
    results: list[dict] = []
    lookup = lookup_questions(lookup_items, seed) if lookup_items else []
    total = len(lookup) + len(items)
    letter_ids = [cm.base.tokenizer("(" + letter, add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]
    for s in range(0, len(lookup), BATCH):
        chunk = lookup[s:s + BATCH]
        rows = cm.generate_rows([RowRequest(q, answer_prefix=f"{name} (") for q, name, _ in chunk], plan,
                                GenerationConfig(max_new_tokens=1), keep_logits=True)
        for (question, name, k), row in zip(chunk, rows):
            picks = {a.variant.name: int(a.first_logits[letter_ids].argmax()) for a in row}
            results.append({"part": "lookup", "question": f"{question} [{name} (]",
                            "answers": {v: LETTERS[i] for v, i in picks.items()},
                            "correct": {v: i == k for v, i in picks.items()}})
        if progress:
            progress(len(results), total)
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    for s in range(0, len(items), BATCH):
        chunk = list(items[s:s + BATCH])
        rows = cm.generate_rows([RowRequest(item.question) for item in chunk], plan, config)
        for item, row in zip(chunk, rows):
            results.append({"part": item.part, "question": item.question, "answers": {a.variant.name: a.text for a in row},
                            "correct": {a.variant.name: item.correct(a.text) for a in row}})
        if progress:
            progress(len(results), total)
    return RetentionReport(tuple(n for n in order if n != BASE), results, time.perf_counter() - start)
