"""The multimodal prompt: placeholder lines before the question, spliced with modality blocks.

As in the paper's prompt, each input gets one line ``<label>: <placeholder>`` before the
question, in the fixed modality order (image, audio, video, point). The chat template
wraps the message; then the text between placeholders is tokenized and each placeholder
is replaced by the matching expert's [prefix + projected encoder tokens + suffix] block.
Every position carries a route: text, or the modality of its block.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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
    """One batch row's prompt as embeddings with a route name per position."""

    embeds: torch.Tensor  # (T, hidden)
    routes: list[str]  # len T: "text" or a modality name
    text: str  # the templated prompt, placeholders kept (for display)

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


def build_prompt_row(prompt_text: str, blocks: dict[str, list[torch.Tensor]], tokenizer, embed) -> PromptRow:
    """Splice modality blocks into the tokenized prompt.

    Args:
        prompt_text: the templated prompt with placeholders.
        blocks: modality -> one ``(tokens, hidden)`` block per placeholder of that modality, in order.
        tokenizer: the base tokenizer.
        embed: the base's input embedding module.
    """
    pattern = placeholder_pattern()
    placeholder_to_modality = {p: n for n, _, p in _modality_info()}
    pieces = pattern.split(prompt_text)
    segments, found = pieces[0::2], pieces[1::2]
    counts = {m: 0 for m in blocks}
    for p in found:
        m = placeholder_to_modality[p]
        counts[m] = counts.get(m, 0) + 1
    for m, n in counts.items():
        have = len(blocks.get(m, []))
        if have != n:
            raise CompositionError(f"the prompt has {n} {m} placeholder(s) but {have} {m} input(s) were encoded; "
                                   "give one input per placeholder.")
    weight = embed.weight
    token_ids = tokenize_segments(tokenizer, segments)
    parts: list[torch.Tensor] = []
    routes: list[str] = []
    used = {m: 0 for m in blocks}
    for i, ids in enumerate(token_ids):
        if ids:
            with torch.no_grad():
                parts.append(embed(torch.tensor(ids, device=weight.device)))
            routes += [TEXT_ROUTE] * len(ids)
        if i < len(found):
            m = placeholder_to_modality[found[i]]
            block = blocks[m][used[m]]
            used[m] += 1
            parts.append(block.to(weight.device, weight.dtype))
            routes += [m] * block.shape[0]
    return PromptRow(torch.cat(parts, dim=0), routes, prompt_text)
