"""Batched generation over routed rows: left padding, KV cache, greedy or nucleus sampling.

Each row is its own prompt (embeddings + a route id per position); rows are left-padded
so the last prompt token of every row sits in the last column and decoding appends one
column per step. Generated tokens are text: at each decode step every row's new token
takes its row's text route.

Prefill costs the padded token count (compute-bound on a CPU), so rows of very different
prompt lengths (a single expert sees one input, a composition all of them) are prefilled
in length buckets, each padded only to its own longest row; their KV caches are then
left-padded to one length and joined, so decoding still runs every row in one batch.
Only the last prompt position's logits are computed (the vocabulary projection of every
position would be a fifth of a small model's prefill).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from modalities.checks import check_float, check_int

from .errors import CompositionError
from .routing import Router


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Frozen: the normalised values (8.0 -> 8) are set through object.__setattr__.
        for name, value in (("max_new_tokens", check_int(self.max_new_tokens, "max_new_tokens", 1, 1024, error=CompositionError)),
                            ("temperature", check_float(self.temperature, "temperature", 0, 5, error=CompositionError)),
                            ("top_p", check_float(self.top_p, "top_p", 0, 1, open_min=True, error=CompositionError)),
                            ("seed", check_int(self.seed, "seed", 0, error=CompositionError))):
            object.__setattr__(self, name, value)


@dataclass
class RoutedBatch:
    """Left-padded prompt batch with per-position global route ids.

    ``shared_prefixes``: groups of rows whose first positions are the same tokens with the same
    coefficients (one variant's rows for several items start with the same system prompt), as
    ``(rows, length)``; ``generate_batch`` prefills each such prefix once (``prefill_shared``).
    """

    embeds: torch.Tensor  # (B, T, H)
    attention_mask: torch.Tensor  # (B, T) long
    position_ids: torch.Tensor  # (B, T)
    route_ids: torch.Tensor  # (B, T) long, index into the coefficient table
    text_route_ids: torch.Tensor  # (B,) long
    lengths: list[int]
    shared_prefixes: list[tuple[list[int], int]] | None = None


def pad_rows(rows_embeds: list[torch.Tensor], rows_route_ids: list[torch.Tensor], text_route_ids: torch.Tensor) -> RoutedBatch:
    lengths = [e.shape[0] for e in rows_embeds]
    b, t, h = len(rows_embeds), max(lengths), rows_embeds[0].shape[1]
    ref = rows_embeds[0]
    embeds = ref.new_zeros(b, t, h)
    mask = torch.zeros(b, t, dtype=torch.long, device=ref.device)
    routes = text_route_ids.to(ref.device)[:, None].repeat(1, t)
    for i, (e, r) in enumerate(zip(rows_embeds, rows_route_ids)):
        embeds[i, t - e.shape[0]:] = e
        mask[i, t - e.shape[0]:] = 1
        routes[i, t - e.shape[0]:] = r.to(ref.device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return RoutedBatch(embeds, mask, position_ids, routes, text_route_ids.to(ref.device), lengths)


def _pick(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    if config.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= config.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def prefill_logits(model, router: Router, batch: RoutedBatch, coef_table: torch.Tensor) -> torch.Tensor:
    """Logits of every prompt position, ``(B, T, vocab)`` (left-padded)."""
    router.set(coef_table[batch.route_ids])
    try:
        return model(inputs_embeds=batch.embeds, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, use_cache=False).logits
    finally:
        router.set(None)


# Prompt tokens (rows x padded width) in one prefill forward pass at most; a larger bucket is split
# into such chunks. It bounds the activations' memory, and on a CPU it is faster: a pass's
# element-wise work (norms, SiLU, residual adds) on tensors larger than the cache runs at memory
# speed. SmolLM2-135M on a 2-core CPU, 96 rows of 44 (87) tokens, alternated 5 times: 48 rows per
# pass took 0.90 (0.91) of the time of all 96 in one, 16 rows 1.06 (0.90). 2048 also keeps a GPU
# busy: it is the chunked-prefill budget serving engines use.
PREFILL_TOKENS = 2048


def length_buckets(lengths: Sequence[int], max_ratio: float = 1.25, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped so that within a group the longest is at most ``max_ratio`` x the shortest, and
    (``max_tokens``) a group's rows x its longest length stays within ``max_tokens`` (a longer row
    is a group of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lengths[i] <= max_ratio * lengths[buckets[-1][0]] and (
                max_tokens is None or (len(buckets[-1]) + 1) * lengths[i] <= max_tokens):
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def _last_logits_only(model) -> dict:
    """``{"logits_to_keep": 1}`` when the model's forward takes it (transformers causal LMs do)."""
    try:
        takes = "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic callables
        takes = False
    return {"logits_to_keep": 1} if takes else {}


def contiguous_head_input(model) -> None:
    """Make the vocabulary projection read a contiguous input (once per model; idempotent).

    With ``logits_to_keep=1`` transformers slices the last position out of ``(B, T, H)``; that
    strided ``(B, 1, H)`` makes ``F.linear`` take a batched matmul over a broadcast weight, which
    reads the whole vocabulary projection once per row (0.3 s of a 64-row prefill of SmolLM2 on a
    CPU, against 0.03 s as one matmul).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_contiguous_input_hook", False):
        return
    head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
    head._contiguous_input_hook = True


def _cache_keyword(model) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.2x, ``past_key_values``
    before (the old name still works there but warns and is to be removed)."""
    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):  # pragma: no cover - exotic callables
        return "past_key_values"


def _cache_of(out):
    """The KV cache a forward returned, under either name (see :func:`_cache_keyword`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _joinable(cache) -> bool:
    """A plain DynamicCache of full-attention layers, whose keys/values can be padded and joined."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # pragma: no cover
        return False
    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer and layer.keys is not None for layer in cache.layers)


def _join_caches(parts: list[tuple[list[int], object]], batch_size: int, length: int):
    """One cache for all rows: each part's ``(rows, T_part)`` keys/values left-padded to ``length``."""
    container = next(cache for _, cache in parts if cache.layers[0].keys.shape[-2] == length)
    for index, layer in enumerate(container.layers):
        for field_name in ("keys", "values"):
            ref = getattr(layer, field_name)
            joined = ref.new_zeros(batch_size, ref.shape[1], length, ref.shape[3])
            for rows, cache in parts:
                part = getattr(cache.layers[index], field_name)
                joined[torch.tensor(rows, device=ref.device), :, length - part.shape[-2]:] = part
            setattr(layer, field_name, joined)
    return container


@torch.no_grad()
def prefill(model, router: Router, batch: RoutedBatch, coef_table: torch.Tensor, *, max_ratio: float = 1.25,
            max_tokens: int | None = PREFILL_TOKENS):
    """Run the prompts; returns the last position's logits ``(B, vocab)`` and the KV cache.

    Rows whose lengths differ by more than ``max_ratio`` are prefilled in separate length
    buckets (each padded to its own longest row, and of ``max_tokens`` at most: see
    ``PREFILL_TOKENS``) and their caches joined, which gives the same numbers as one padded
    pass up to float rounding, for less compute.
    """
    keep = _last_logits_only(model)
    buckets = length_buckets(batch.lengths, max_ratio, max_tokens)
    try:
        if len(buckets) > 1:
            width = batch.embeds.shape[1]
            parts, logits = [], None
            for rows in buckets:
                cols = slice(width - max(batch.lengths[i] for i in rows), width)
                idx = torch.tensor(rows, device=batch.embeds.device)
                router.set(coef_table[batch.route_ids[idx, cols]])
                out = model(inputs_embeds=batch.embeds[idx, cols], attention_mask=batch.attention_mask[idx, cols],
                            position_ids=batch.position_ids[idx, cols], use_cache=True, **keep)
                if not _joinable(_cache_of(out)):
                    break  # e.g. sliding-window or hybrid caches: one padded pass below
                last = out.logits[:, -1]
                logits = last.new_empty(len(batch.lengths), last.shape[-1]) if logits is None else logits
                logits[idx] = last
                parts.append((rows, _cache_of(out)))
            else:
                return logits, _join_caches(parts, len(batch.lengths), width)
        router.set(coef_table[batch.route_ids])
        out = model(inputs_embeds=batch.embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    use_cache=True, **keep)
        return out.logits[:, -1], _cache_of(out)
    finally:
        router.set(None)


@torch.no_grad()
def generate_batch(model, router: Router, batch: RoutedBatch, coef_table: torch.Tensor, config: GenerationConfig,
                   eos_token_ids: list[int], on_step: Callable[[list[list[int]]], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   on_first_logits: Callable[[torch.Tensor], None] | None = None) -> list[list[int]]:
    """Generate new token ids for every row (EOS excluded).

    ``on_step`` sees the tokens so far after each step (for streaming); ``should_stop``
    returning True ends generation early (a user cancelling); ``on_first_logits`` sees the
    ``(B, vocab)`` logits of the first generated position (for scoring tools).
    """
    try:
        mask = batch.attention_mask
        if batch.shared_prefixes and _joinable_model(model):
            logits, cache, mask = prefill_shared(model, router, batch, coef_table)
        else:
            logits, cache = prefill(model, router, batch, coef_table)
        if on_first_logits is not None:
            on_first_logits(logits)
        return decode(model, router, logits, cache, mask, batch.position_ids[:, -1:],
                      coef_table[batch.text_route_ids][:, None, :], config, eos_token_ids, on_step, should_stop).tokens
    finally:
        router.set(None)


def _real_positions(batch: RoutedBatch, row: int, start: int, stop: int) -> tuple[slice, torch.Tensor]:
    """Columns of ``batch`` holding row ``row``'s real positions ``[start, stop)`` (it is left-padded)."""
    width = batch.embeds.shape[1]
    offset = width - batch.lengths[row]
    cols = slice(offset + start, offset + stop)
    return cols, batch.route_ids[row, cols]


@torch.no_grad()
def prefill_shared(model, router: Router, batch: RoutedBatch, coef_table: torch.Tensor, *, max_ratio: float = 1.25,
                   max_tokens: int | None = PREFILL_TOKENS):
    """``prefill`` where groups of rows share their first positions (``batch.shared_prefixes``): each
    shared prefix is prefilled once, then every row prefills only the rest of its prompt on top of
    its group's cache (rows in length buckets of the rest, as ``prefill``).

    Returns the last position's logits ``(B, vocab)``, one KV cache for every row and its attention
    mask ``(B, T')``: each row holds its prefix (left-padded to the longest prefix) and then its rest
    (left-padded within its bucket), the padding masked out. Equal to ``prefill`` up to float rounding.
    """
    from transformers.cache_utils import DynamicCache

    keep = _last_logits_only(model)
    cache_keyword = _cache_keyword(model)
    n = len(batch.lengths)
    device = batch.embeds.device
    prefix_of = [0] * n  # the shared prefix length of each row (0: none)
    group_of = [-1] * n
    groups = [(list(rows), int(length)) for rows, length in batch.shared_prefixes or () if len(rows) > 0 and length > 0]
    for g, (rows, length) in enumerate(groups):
        for i in rows:
            if not 0 < length < batch.lengths[i]:
                raise CompositionError(f"a shared prefix of {length} positions for a row of {batch.lengths[i]}: "
                                       "a row must keep at least its last position to prefill.")
            prefix_of[i], group_of[i] = length, g
    # Rows outside every group form one-row groups with an empty prefix: they prefill whole below.
    p_width = max((length for _, length in groups), default=0)
    prefix_cache = None
    prefix_mask = torch.zeros(len(groups), p_width, dtype=torch.long, device=device)
    if groups:
        reps = [rows[0] for rows, _ in groups]
        embeds = batch.embeds.new_zeros(len(groups), p_width, batch.embeds.shape[-1])
        routes = batch.text_route_ids.to(device)[torch.tensor(reps, device=device)][:, None].repeat(1, p_width)
        positions = torch.zeros(len(groups), p_width, dtype=torch.long, device=device)
        for g, ((rows, length), rep) in enumerate(zip(groups, reps)):
            cols, route = _real_positions(batch, rep, 0, length)
            embeds[g, p_width - length:] = batch.embeds[rep, cols]
            routes[g, p_width - length:] = route
            prefix_mask[g, p_width - length:] = 1
            positions[g, p_width - length:] = torch.arange(length, device=device)
        router.set(coef_table[routes])
        out = model(inputs_embeds=embeds, attention_mask=prefix_mask, position_ids=positions, use_cache=True, **keep)
        prefix_cache = _cache_of(out)
        if not _joinable(prefix_cache):  # pragma: no cover - _joinable_model said it would be
            raise CompositionError("this base model's KV cache cannot be shared between rows.")
    rest = [batch.lengths[i] - prefix_of[i] for i in range(n)]
    parts, logits = [], None
    for bucket in length_buckets(rest, max_ratio, max_tokens):
        s_width = max(rest[i] for i in bucket)
        idx = torch.tensor(bucket, device=device)
        embeds = batch.embeds.new_zeros(len(bucket), s_width, batch.embeds.shape[-1])
        routes = batch.text_route_ids.to(device)[idx][:, None].repeat(1, s_width)
        mask = torch.zeros(len(bucket), p_width + s_width, dtype=torch.long, device=device)
        positions = torch.zeros(len(bucket), s_width, dtype=torch.long, device=device)
        for k, i in enumerate(bucket):
            cols, route = _real_positions(batch, i, prefix_of[i], batch.lengths[i])
            embeds[k, s_width - rest[i]:] = batch.embeds[i, cols]
            routes[k, s_width - rest[i]:] = route
            mask[k, p_width + s_width - rest[i]:] = 1
            positions[k, s_width - rest[i]:] = torch.arange(prefix_of[i], batch.lengths[i], device=device)
            if group_of[i] >= 0:
                mask[k, :p_width] = prefix_mask[group_of[i]]
        kwargs = {}
        if prefix_cache is not None:
            # Each row's past: its group's prefix (rows without a group read zeros, masked out).
            pick = torch.tensor([max(group_of[i], 0) for i in bucket], device=device)
            kwargs[cache_keyword] = DynamicCache([(layer.keys[pick], layer.values[pick]) for layer in prefix_cache.layers])
            attention = mask
        else:
            attention = mask[:, p_width:]
        router.set(coef_table[routes])
        out = model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions, use_cache=True, **keep, **kwargs)
        last = out.logits[:, -1]
        logits = last.new_empty(n, last.shape[-1]) if logits is None else logits
        logits[idx] = last
        parts.append((bucket, _cache_of(out), attention))
    # Each part's cache is as long as its mask: right-aligned in the widest, the caches join as prefill's do.
    width = max(part_mask.shape[1] for _, _, part_mask in parts)
    joined_mask = torch.zeros(n, width, dtype=torch.long, device=device)
    for rows, _, part_mask in parts:
        joined_mask[torch.tensor(rows, device=device), width - part_mask.shape[1]:] = part_mask
    router.set(None)
    return logits, _join_caches([(rows, cache) for rows, cache, _ in parts], n, width), joined_mask


@dataclass
class Decoded:
    """What a decode loop produced: the new tokens of every row (EOS excluded), the KV cache at its end,
    and per row how many of its tokens went through the model (the last one picked never does)."""

    tokens: list[list[int]]
    cache: object
    fed: list[int]
    width: int  # the cache's length before decoding (rows right-aligned in it)


def decode(model, router: Router, logits: torch.Tensor, cache, mask: torch.Tensor, position: torch.Tensor,
           text_coef: torch.Tensor, config: GenerationConfig, eos_token_ids: list[int],
           on_step: Callable[[list[list[int]]], None] | None = None,
           should_stop: Callable[[], bool] | None = None) -> Decoded:
    """The decoding loop after a prefill: pick, feed, repeat (generated tokens take each row's text route).

    Args:
        logits: ``(B, vocab)`` of every row's last prompt position; ``cache`` the prompts' KV cache.
        mask: ``(B, T)`` attention mask of the cache (0 at padding); ``position``: ``(B, 1)`` each row's last position.
        text_coef: ``(B, 1, slots)`` every row's text-route coefficients.
    """
    generator = torch.Generator().manual_seed(config.seed) if config.temperature > 0 else None
    eos = torch.tensor(sorted(set(eos_token_ids)), device=logits.device)
    b = logits.shape[0]
    width = mask.shape[1]
    tokens: list[list[int]] = [[] for _ in range(b)]
    fed = [0] * b
    done = torch.zeros(b, dtype=torch.bool, device=logits.device)
    cache_keyword = _cache_keyword(model)
    try:
        for step in range(config.max_new_tokens):
            next_tokens = _pick(logits, config, generator)
            finished_now = torch.isin(next_tokens, eos) if eos.numel() else torch.zeros_like(done)
            for i, token in enumerate(next_tokens.tolist()):
                if not done[i] and not finished_now[i]:
                    tokens[i].append(token)
            done |= finished_now
            if on_step is not None:
                on_step(tokens)
            if bool(done.all()) or step == config.max_new_tokens - 1 or (should_stop is not None and should_stop()):
                break
            fed = [len(t) for t in tokens]  # everything picked so far goes through the model now
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            position = position + 1
            router.set(text_coef)
            out = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=position,
                        use_cache=True, **{cache_keyword: cache})
            logits, cache = out.logits[:, -1], _cache_of(out)
    finally:
        router.set(None)
    return Decoded(tokens, cache, fed, width)


@dataclass
class RowInput:
    """One row for ``generate_continuing``: the positions still to prefill, and the KV cache of those before.

    ``past`` is a batch-of-one cache of the row's first ``past_length`` positions (None: no cache,
    the row is prefilled whole); it is read, never changed.
    """

    embeds: torch.Tensor  # (T_new, hidden)
    route_ids: torch.Tensor  # (T_new,) into the coefficient table
    text_route_id: int
    past: object = None
    past_length: int = 0


@torch.no_grad()
def generate_continuing(model, router: Router, rows: Sequence[RowInput], coef_table: torch.Tensor, config: GenerationConfig,
                        eos_token_ids: list[int], on_step: Callable[[list[list[int]]], None] | None = None,
                        should_stop: Callable[[], bool] | None = None) -> Decoded:
    """``generate_batch`` for rows that may continue a KV cache: each such row prefills only its new
    positions on a copy of its cache; rows without one are prefilled together (length buckets);
    then every row's cache is right-aligned in one and all rows decode together.

    The returned ``Decoded.cache`` holds row ``i`` at ``[width - length_i, width + fed_i)``, where
    ``length_i`` is its whole prompt (past + new).
    """
    if not _joinable_model(model):
        raise CompositionError("this base model's KV cache cannot be continued (not a plain full-attention cache); "
                               "answer without reuse.")
    device = coef_table.device
    fresh = [i for i, r in enumerate(rows) if r.past is None]
    lengths = [r.past_length + r.embeds.shape[0] for r in rows]
    parts: list[tuple[int, object, int]] = []  # (row, batch-of-rows cache, its row index) with the row right-aligned
    logits = None
    keep = _last_logits_only(model)
    cache_keyword = _cache_keyword(model)
    try:
        if fresh:
            batch = pad_rows([rows[i].embeds for i in fresh], [rows[i].route_ids for i in fresh],
                             torch.tensor([rows[i].text_route_id for i in fresh]))
            fresh_logits, fresh_cache = prefill(model, router, batch, coef_table)
            if not _joinable(fresh_cache):
                raise CompositionError("this base model's KV cache cannot be continued; answer without reuse.")
            logits = fresh_logits.new_empty(len(rows), fresh_logits.shape[-1])
            for j, i in enumerate(fresh):
                logits[i] = fresh_logits[j]
                parts.append((i, fresh_cache, j))
        for i, row in enumerate(rows):
            if row.past is None:
                continue
            router.set(coef_table[row.route_ids.to(device)][None])
            out = model(inputs_embeds=row.embeds[None], attention_mask=torch.ones(1, lengths[i], dtype=torch.long, device=device),
                        position_ids=torch.arange(row.past_length, lengths[i], device=device)[None], use_cache=True,
                        **{cache_keyword: copy_cache(row.past)}, **keep)
            last = out.logits[:, -1]
            logits = last.new_empty(len(rows), last.shape[-1]) if logits is None else logits
            logits[i] = last[0]
            parts.append((i, _cache_of(out), 0))
        router.set(None)
        width = max(lengths)
        cache = _align_rows(parts, lengths, width)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for i, length in enumerate(lengths):
            mask[i, width - length:] = 1
        position = torch.tensor(lengths, device=device)[:, None] - 1
        text_coef = coef_table[torch.tensor([r.text_route_id for r in rows], device=device)][:, None, :]
        return decode(model, router, logits, cache, mask, position, text_coef, config, eos_token_ids, on_step, should_stop)
    finally:
        router.set(None)


def _joinable_model(model) -> bool:
    """Whether the model's KV cache is a plain DynamicCache of full-attention layers (what can be continued)."""
    config = getattr(model, "config", None)
    layer_types = getattr(config, "layer_types", None) or []
    return not any(t != "full_attention" for t in layer_types) and not getattr(config, "sliding_window", None)


def copy_cache(cache):
    """A new DynamicCache holding copies of ``cache``'s keys and values (the stored one stays as it is)."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache([(layer.keys.clone(), layer.values.clone()) for layer in cache.layers])


def row_cache(cache, row: int, start: int, stop: int):
    """Row ``row``'s positions ``[start, stop)`` of a batch cache, as a batch-of-one DynamicCache (copied)."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache([(layer.keys[row:row + 1, :, start:stop].clone(), layer.values[row:row + 1, :, start:stop].clone())
                         for layer in cache.layers])


def _align_rows(parts: list[tuple[int, object, int]], lengths: list[int], width: int):
    """One cache of ``len(lengths)`` rows, each row's ``lengths[i]`` last positions of its part, right-aligned."""
    from transformers.cache_utils import DynamicCache

    layers = []
    first = parts[0][1]
    for index, ref in enumerate(first.layers):
        joined_k = ref.keys.new_zeros(len(lengths), ref.keys.shape[1], width, ref.keys.shape[3])
        joined_v = ref.values.new_zeros(len(lengths), ref.values.shape[1], width, ref.values.shape[3])
        for row, cache, j in parts:
            k, v = cache.layers[index].keys[j], cache.layers[index].values[j]
            n = lengths[row]
            joined_k[row, :, width - n:] = k[:, k.shape[1] - n:]
            joined_v[row, :, width - n:] = v[:, v.shape[1] - n:]
        layers.append((joined_k, joined_v))
    return DynamicCache(layers)
