"""Stage 0, the slot reader: the projector learns to emit the scene's words in answer order,
with no LLM pass.

The projector of every bundled expert is a small Q-Former (``composition/projectors.py``, the
projector type the paper uses for audio): ``SLOT_QUERIES`` learned queries cross-attend to the
encoder's feature tokens and give one LLM token each. Stage 0 trains it so that the tokens
*are* the scene's words, two per object in the order the answers name them (category order;
audio: time order), ``nothing`` for a missing object:

    a scene with a blue cube and a red ball  ->  " red" " ball" " blue" " cube" " nothing" " nothing"

The loss is a classification of each output token among the slot words by its cosine with
the LLM's own input embeddings of those words, plus a pull towards the target embedding
itself (so the token is read as that word, at the embedding scale).

Why: trained through the LLM (the recipe until December 2026: a linear projector, 49 tokens,
stage 0 only pulling tokens towards the words of the scene in no order), no expert learned to
bind a colour to its object in the 70-280 stage-2 steps this CPU affords ("describe" 0-0.13
held-out, README). A classifier step costs ~0.1 s here against ~5 s for an LLM step, so the
perception is learned in thousands of cheap steps, and the LLM stages only learn to read six
word-like tokens and phrase the answer. Six tokens instead of 49-64 also make every LLM step
about half as long.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .data import ModalityData
from .instructions import answer_order
from .world import CATEGORIES, COLOUR_NAMES, MAX_OBJECTS

NOTHING = "nothing"
SLOT_WORDS: tuple[str, ...] = tuple(CATEGORIES) + tuple(COLOUR_NAMES) + (NOTHING,)
SLOT_QUERIES = 2 * MAX_OBJECTS  # a colour word and a category word per object
# Cosine logits are scaled so that a token near one word and far from the others gives a
# confident distribution (cosines between different word embeddings are ~0.1-0.4).
COSINE_SCALE = 20.0


def slot_targets(data: ModalityData, colours_known: bool = True) -> torch.Tensor:
    """(scenes, SLOT_QUERIES) indices into SLOT_WORDS: colour, category per object in answer
    order, ``nothing`` past the last object (and for colours nobody can hear: audio without speech)."""
    nothing = SLOT_WORDS.index(NOTHING)
    rows = []
    for scene in data.scenes:
        row = []
        for obj in answer_order(scene, data.modality):
            row += [SLOT_WORDS.index(obj.colour) if colours_known else nothing, SLOT_WORDS.index(obj.category)]
        rows.append(row + [nothing] * (SLOT_QUERIES - len(row)))
    return torch.tensor(rows)


def read_slots(projector: nn.Module, features: torch.Tensor, word_embeddings: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The word each output token is nearest to (cosine), (scenes, SLOT_QUERIES) indices into SLOT_WORDS."""
    unit = F.normalize(word_embeddings, dim=-1)
    with torch.no_grad():
        tokens = torch.cat([projector(features[i:i + batch]) for i in range(0, len(features), batch)])
    return (F.normalize(tokens.float(), dim=-1) @ unit.T).argmax(-1)


def slot_accuracy(predicted: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Per-token accuracy, and the fraction of scenes whose every slot is right (every object
    with its colour, in order: what "Describe the image." asks)."""
    hits = predicted == targets
    return {"token": round(hits.float().mean().item(), 3), "scene": round(hits.all(1).float().mean().item(), 3),
            "categories": round(hits[:, 1::2].all(1).float().mean().item(), 3)}


def train_slot_reader(projector: nn.Module, features: torch.Tensor, targets: torch.Tensor, word_embeddings: torch.Tensor,
                      steps: int, batch_size: int, lr: float, seed: int, warmup: int = 50, log=print) -> list[dict]:
    """AdamW with warm-up and cosine decay on the slot loss; ``features`` (scenes, tokens, dim),
    ``targets`` from ``slot_targets``, ``word_embeddings`` (len(SLOT_WORDS), hidden). Returns a log."""
    unit = F.normalize(word_embeddings, dim=-1)
    scale = word_embeddings.norm(dim=-1).mean()
    optimizer = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    rows, start, running = [], time.perf_counter(), None
    projector.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        idx = torch.randint(0, len(features), (batch_size,), generator=g)
        tokens = projector(features[idx])  # (B, SLOT_QUERIES, hidden)
        want = targets[idx]
        logits = F.normalize(tokens, dim=-1) @ unit.T * COSINE_SCALE
        loss = F.cross_entropy(logits.reshape(-1, len(SLOT_WORDS)), want.reshape(-1))
        loss = loss + ((tokens - word_embeddings[want]) ** 2).sum(-1).mean() / scale ** 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if (step + 1) % 250 == 0 or step == steps - 1:
            rows.append({"stage0_step": step + 1, "loss": round(running, 4), "seconds": round(time.perf_counter() - start, 1)})
            log(f"  stage 0 (slot reader) step {step + 1}/{steps} loss {running:.3f}")
    projector.eval()
    return rows
