"""The multimodal prompt: placeholder lines before the question, spliced with modality blocks.

As in the paper's prompt, each input gets one line ``<label>: <placeholder>`` before the
question, in the fixed modality order (image, audio, video, point). The chat template
wraps the message; then the text between placeholders is tokenized and each placeholder
is replaced by the matching expert's [prefix + projected encoder tokens + suffix] block.
Every position carries a route: text, or the modality of its block.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .errors import CompositionError
from .variants import TEXT_ROUTE


def _modality_info() -> list[tuple[str, str, str]]:
    """(name, label, placeholder) of every registered modality, in prompt order."""
    from modalities import MODALITY_NAMES, get_modality

    return [(n, get_modality(n).label, get_modality(n).placeholder) for n in MODALITY_NAMES]


def user_message(question: str, input_modalities: list[str]) -> str:
    """One ``label: <placeholder>`` line per input (modality order), then the question."""
    lines = []
    for name, label, placeholder in _modality_info():
        lines += [f"{label}: {placeholder}"] * input_modalities.count(name)
    return "\n".join([*lines, question.strip()])


def placeholder_pattern() -> re.Pattern:
    return re.compile("(" + "|".join(re.escape(p) for _, _, p in _modality_info()) + ")")


@dataclass
class PromptRow:
    """One batch row's prompt as embeddings with a route name per position.

    ``keys`` name what each position holds: a token id, or ``(modality, input key, offset)`` in
    a modality block; two rows whose keys (and coefficients) agree up to a point computed the
    same KV cache up to it.
    """

    embeds: torch.Tensor  # (T, hidden)
    routes: list[str]  # len T: "text" or a modality name
    text: str  # the templated prompt, placeholders kept (for display)
    keys: list = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.routes)


def tokenize_segments(tokenizer, segments: list[str]) -> list[list[int]]:
    """Token ids per text segment; only the first segment gets the tokenizer's leading special tokens."""
    ids = []
    for i, segment in enumerate(segments):
        if not segment:
            ids.append([])
            continue
        encoded = tokenizer(segment, add_special_tokens=(i == 0))["input_ids"]
        if i == 0 and tokenizer.eos_token_id is not None and encoded and encoded[-1] == tokenizer.eos_token_id and len(encoded) > 1:
            encoded = encoded[:-1]  # some tokenizers append EOS with special tokens on
        ids.append(list(encoded))
    return ids


def build_prompt_row(prompt_text: str, blocks: dict[str, list[torch.Tensor]], tokenizer, embed,
                     block_keys: dict[str, list] | None = None) -> PromptRow:
    """Splice modality blocks into the tokenized prompt.

    Args:
        prompt_text: the templated prompt with placeholders.
        blocks: modality -> one ``(tokens, hidden)`` block per placeholder of that modality, in order.
        tokenizer: the base tokenizer.
        embed: the base's input embedding module.
        block_keys: modality -> a key per block (what input and expert made it), for ``PromptRow.keys``.
    """
    return build_conversation_row([prompt_text], [], blocks, tokenizer, embed, block_keys)


def build_conversation_row(pieces: list[str], answers: list[list[int]], blocks: dict[str, list[torch.Tensor]], tokenizer,
                           embed, block_keys: dict[str, list] | None = None) -> PromptRow:
    """A conversation's row: the template's pieces with the earlier answers' own token ids between them
    (``answers[k]`` after ``pieces[k]``) and each placeholder replaced by its modality block.

    Blocks are taken in order of appearance per modality across all turns, so an input keeps its
    place (and its tokens their route) in every later turn.
    """
    if len(answers) != len(pieces) - 1:
        raise CompositionError(f"a conversation of {len(pieces)} turns has {len(pieces) - 1} earlier answer(s); "
                               f"got {len(answers)}.")
    pattern = placeholder_pattern()
    placeholder_to_modality = {p: n for n, _, p in _modality_info()}
    # The row as parts: ("text", str) | ("ids", [int]) | ("block", modality); text parts are tokenized together.
    parts: list[tuple] = []
    for k, piece in enumerate(pieces):
        split = pattern.split(piece)
        for j, segment in enumerate(split):
            parts.append(("text", segment) if j % 2 == 0 else ("block", placeholder_to_modality[segment]))
        if k < len(answers):
            parts.append(("ids", list(answers[k])))
    found = [p[1] for p in parts if p[0] == "block"]
    counts = {m: found.count(m) for m in set(found) | set(blocks)}
    for m, n in counts.items():
        have = len(blocks.get(m, []))
        if have != n:
            raise CompositionError(f"the prompt has {n} {m} placeholder(s) but {have} {m} input(s) were encoded; "
                                   "give one input per placeholder.")
    weight = embed.weight
    texts = tokenize_segments(tokenizer, [p[1] for p in parts if p[0] == "text"])
    chunks: list[torch.Tensor] = []
    routes: list[str] = []
    keys: list = []
    shown: list[str] = []
    used = {m: 0 for m in blocks}
    text_index = 0

    def add_ids(ids: list[int]) -> None:
        if ids:
            with torch.no_grad():
                chunks.append(embed(torch.tensor(ids, device=weight.device)))
            routes.extend([TEXT_ROUTE] * len(ids))
            keys.extend(ids)

    for part in parts:
        if part[0] == "text":
            add_ids(texts[text_index])
            text_index += 1
            shown.append(part[1])
        elif part[0] == "ids":
            add_ids(part[1])
            shown.append(tokenizer.decode(part[1]))
        else:
            m = part[1]
            block = blocks[m][used[m]]
            key = (block_keys or {}).get(m, [None] * len(blocks[m]))[used[m]]
            used[m] += 1
            chunks.append(block.to(weight.device, weight.dtype))
            routes.extend([m] * block.shape[0])
            keys.extend((m, key, j) for j in range(block.shape[0]))
            shown.append(next(p for n, _, p in _modality_info() if n == m))
    return PromptRow(torch.cat(chunks, dim=0), routes, "".join(shown), keys)
