"""The paper-fidelity prompt: the file's human turn verbatim, placeholders where the file puts them.

The studio prompt (``composition.prompt.user_message``) rebuilds the message: one
``<label>: <placeholder>`` line per input in modality order, then the question with the
file's placeholders removed. The paper's runner instead tokenizes the human turn as it is
in the file (THUNLP-MT/ModelCompose ``modelcompose/data/utils.py`` ``preprocess_v1`` on the
item's ``conversations``, each placeholder replaced by its modality's features). Its line
labels, when a prompt is built from inputs, are ``image: <image>``, ``audio: <audio>``,
``video: <video>``, ``point: <point>`` in that order (``demo_app.py``, ``predict``).

Here, per variant row:
- the turn is kept verbatim, placeholders where the file puts them;
- an input whose placeholder the turn lacks gets the original's label line in front
  (``PAPER_LABELS``, modality order), as the original's demo builds it;
- a placeholder of a modality the variant does not take (a single expert sees only its own
  input) is removed with its label line, so the row holds no placeholder without features.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from ..errors import CompositionError

# The original's line labels (ModelCompose demo_app.py), in prompt order.
PAPER_LABELS = {"image": "image", "audio": "audio", "video": "video", "point": "point"}
PAPER_MAX_NEW_TOKENS = 128  # model_multimodal_qa_loader.py: max_new_tokens=128, greedy (--temperature 0)
PROMPT_MODES = ("studio", "paper")


def _placeholder(modality: str) -> str:
    from modalities import get_modality

    return get_modality(modality).placeholder


def _labels(modality: str) -> list[str]:
    from modalities import get_modality

    return sorted({PAPER_LABELS.get(modality, modality), get_modality(modality).label, modality}, key=len, reverse=True)


def drop_placeholder_lines(text: str, modalities: Iterable[str]) -> str:
    """``text`` without the placeholders of ``modalities``, each with its ``label:`` and line break."""
    for m in modalities:
        labels = "|".join(re.escape(label) for label in _labels(m))
        text = re.sub(rf"(?:(?:{labels})[ \t]*:[ \t]*)?{re.escape(_placeholder(m))}[ \t]*\n?", "", text)
    return text


def placeholder_counts(turn: str) -> dict[str, int]:
    from modalities import MODALITY_NAMES

    return {m: turn.count(_placeholder(m)) for m in MODALITY_NAMES if _placeholder(m) in turn}


def check_paper_turn(item_id: str, turn: str, input_modalities: Sequence[str]) -> None:
    """Refuse a turn whose placeholders cannot all get features: more of a modality than it has inputs."""
    have = {m: list(input_modalities).count(m) for m in set(input_modalities)}
    for m, n in placeholder_counts(turn).items():
        if n > have.get(m, 0):
            raise CompositionError(f"item {item_id!r}: the human turn has {n} {_placeholder(m)} placeholder(s) but "
                                   f"{have.get(m, 0)} {m} input(s); each placeholder needs one input.")
        if 0 < n < have[m]:
            raise CompositionError(f"item {item_id!r}: the human turn has {n} {_placeholder(m)} placeholder(s) for "
                                   f"{have[m]} {m} inputs; put one placeholder per input, or none.")


def paper_message(turn: str, taken: Sequence[str]) -> str:
    """The user message of one row: the turn verbatim, label lines added for missing placeholders,
    placeholders of modalities the row does not take removed."""
    from modalities import MODALITY_NAMES

    counts = placeholder_counts(turn)
    message = drop_placeholder_lines(turn, [m for m in counts if m not in taken])
    lines = [f"{PAPER_LABELS.get(m, m)}: {_placeholder(m)}" for m in MODALITY_NAMES if m not in counts
             for _ in range(list(taken).count(m))]
    return "\n".join([*lines, message]) if lines else message


def paper_prompt_rows(cm, turn: str, inputs: Sequence, variants: Sequence) -> list:
    """``ComposedModel.prompt_rows`` with the paper-fidelity message (same blocks, same template)."""
    return cm.prompt_rows(turn, inputs, variants, message_fn=paper_message)
