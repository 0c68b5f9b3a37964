"""The option-letter lookup: text-only questions that teach and measure "name the option, then its letter".

Our experts answer option questions as "cone (B)": the option's name, then the letter written
before that name in the question ("A. star B. cone C. cross D. ring"); MCUB's first-letter
rule reads the B. Measured on the bundled experts (`python -m training.diagnose lookup`),
the base LLM alone copies the right letter after a given name only at chance (SmolLM2-135M
has no multiple-choice letter skill, unlike the paper's Vicuna), so the skill lives in each
expert's LoRA delta -- and a composition, which scales every delta by 1/K, dilutes it.

Two uses:
- `lookup_example` builds text-only training rows (stage 3 of the recipe): no modality input
  is needed, because the name is given (teacher-forced) and only the letter after it is
  learned. Options come from the world's categories plus a list of everyday nouns, so what
  is learned is "copy the letter written before this word", not a table of 8 categories.
- `letter_lookup_accuracy` measures the skill on the world's categories: the prompt plus
  "<option> (", is the next token the option's letter?
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from modalities.checks import check_int

from .instructions import LETTERS, format_options, mcub_question, option_answer
from .world import CATEGORIES, LABELS

# Everyday nouns (one token or two in SmolLM2's vocabulary) that widen the option pool.
NOUNS: tuple[str, ...] = tuple(
    "apple bag bell boat book bottle bowl box bread brush bucket button cake candle cap card carpet chair clock coat "
    "comb cup desk door egg fan feather flag flower fork glass glove hammer hat horse key kite knife lamp leaf lemon "
    "map mirror nail needle orange pan pear pen pencil piano pillow plate pot rope ruler saw scarf shell shoe sock "
    "spoon stone table tent tie towel tree truck umbrella vase wallet watch wheel whistle window".split())
LOOKUP_VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(CATEGORIES + NOUNS))
LOOKUP_BATCH = 8  # questions per batch (each runs every variant)


def lookup_example(rng: np.random.Generator, modality: str, vocabulary: Sequence[str] = LOOKUP_VOCABULARY) -> tuple[str, str]:
    """(question, answer) in the two option formats the experts answer: MCUB's "what do these
    inputs have in common?" with one named option, or "which of these appear in the <label>?"
    with one or two."""
    options = [vocabulary[i] for i in rng.choice(len(vocabulary), size=len(LETTERS), replace=False)]
    if rng.random() < 0.5:
        present = [options[int(rng.integers(len(LETTERS)))]]
        question = mcub_question(options)
    else:
        k = int(rng.integers(1, 3))
        present = [options[i] for i in rng.choice(len(LETTERS), size=k, replace=False)]
        question = f"Which of these appear in the {LABELS[modality]}? {format_options(options)}"
    return question, option_answer(options, present)


def letter_token_ids(tokenizer) -> list[int]:
    """The token ids of A-D as they follow "(" in an answer ("cone (B)")."""
    return [tokenizer("(" + letter, add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]


def letter_mask(answer_ids: Sequence[int], letter_ids: Sequence[int]) -> list[bool]:
    """True at each option letter of a tokenized answer and at the token after it (")"):
    the tokens stage 3 is trained on; the names before them are given."""
    letters = set(letter_ids)
    mask = [False] * len(answer_ids)
    for j, token in enumerate(answer_ids):
        if token in letters and j > 0:
            mask[j] = True
            if j + 1 < len(answer_ids):
                mask[j + 1] = True
    return mask


@torch.no_grad()
def letter_lookup_accuracy(cm, variants: Sequence[str], n: int = 48, seed: int = 0) -> dict[str, float]:
    """Fraction of `n` text-only MCUB questions (options from the world's categories) where,
    after "<option> (", the most likely of A-D is that option's letter; for the base LLM alone
    ("base") and for each variant (expert or composition, as they answer text)."""
    from composition.composer import RowRequest
    from composition.generate import GenerationConfig
    from composition.variants import BASE, Coefficients

    check_int(n, "n", 1)
    if getattr(cm, "materialized_variant", None) is not None:
        raise ValueError("the composed model has materialized weights; the base cannot be measured on it. Use a fresh ComposedModel.")
    ids = letter_token_ids(cm.base.tokenizer)
    plan = cm.plan(set(), [BASE, *variants], Coefficients())
    rng = np.random.default_rng([seed, 41])
    requests, answers = [], []
    for _ in range(n):
        options = [CATEGORIES[i] for i in rng.choice(len(CATEGORIES), size=len(LETTERS), replace=False)]
        k = int(rng.integers(len(LETTERS)))
        requests.append(RowRequest(mcub_question(options), answer_prefix=f"{options[k]} ("))
        answers.append(k)
    hits = {rv.name: 0 for rv in plan.variants}
    one_token = GenerationConfig(max_new_tokens=1)
    for start in range(0, n, LOOKUP_BATCH):
        rows = cm.generate_rows(requests[start:start + LOOKUP_BATCH], plan, one_token, keep_logits=True)
        for row, k in zip(rows, answers[start:start + LOOKUP_BATCH]):
            for answer in row:
                hits[answer.variant.name] += int(int(answer.first_logits[ids].argmax()) == k)
    return {name: round(h / n, 4) for name, h in hits.items()}
