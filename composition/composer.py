"""The composed model: one base LLM, any number of experts, every variant side by side.

The base's target linear layers are wrapped once in RoutedLinear layers; each expert's
deltas become slots. A request names variants and coefficients; they are resolved into a
coefficient table (one row per batch row and route) that the forward pass reads, so
recomposition is free and concurrent requests never share mutable composition state:
coefficients live in the request, not in the model.
"""
from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch

from .errors import CompositionError
from .expert import Expert, load_expert
from .inputs import ModalInput
from .generate import (GenerationConfig, RoutedBatch, RowInput, contiguous_head_input, generate_batch, generate_continuing, pad_rows,
                       prefill_logits, row_cache)
from .kv_cache import KVCacheStore
from .lora import LLAMA_TARGETS
from .prompt import PromptRow, build_conversation_row, user_message
from .routing import RoutedLinear, Router, attach_routed_linears
from .plan import Plan, make_plan
from .schedules import ModuleLayout
from .variants import TEXT_ROUTE, Coefficients, ResolvedVariant, SlotTable, VariantKind, VariantSpec, route_names

# Each dense merge result is as large as the model's target layers: keep only a few. A core-space
# result is a low-rank slot (rank <= K·r), a few percent of that: keep more.
MAX_DENSE_RESULTS = 2
MAX_CORE_RESULTS = 8
DEFAULT_KV_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class Turn:
    """One user turn of a conversation: its text and the files given with it (any modality, any turn)."""

    text: str
    inputs: tuple[ModalInput, ...] = ()


@dataclass(frozen=True)
class RowRequest:
    """One prompt for the batch entry: the user's text and its inputs, after any earlier turns.

    ``message_fn(question, modalities read)`` writes each user turn (default: one
    ``label: <placeholder>`` line per input, then the text; the paper-fidelity prompt passes
    the human turn verbatim); ``answer_prefix`` is text the answer is made to start with (a
    scoring tool forcing "cone (" to read the next token). A conversation gives its earlier
    turns in ``history`` and, per variant, that variant's own answers to them (token ids, as
    it generated them) in ``answers``.
    """

    question: str
    inputs: tuple[ModalInput, ...] = ()
    message_fn: Callable[[str, list[str]], str] = user_message
    answer_prefix: str = ""
    history: tuple[Turn, ...] = ()
    answers: Mapping[str, Sequence[Sequence[int]]] = field(default_factory=dict)

    @property
    def all_inputs(self) -> list[ModalInput]:
        return [item for turn in self.history for item in turn.inputs] + list(self.inputs)


@dataclass
class RowAnswer:
    """One (request, variant) answer of the batch entry."""

    variant: ResolvedVariant
    text: str
    token_ids: list[int]
    prompt_tokens: int
    seconds: float  # the whole batch's wall time
    first_logits: torch.Tensor | None = None  # (vocab,) at the first generated position, with keep_logits
    notes: list[str] = field(default_factory=list)  # about the prompt (turns left out to fit the context)
    reused_tokens: int = 0  # prompt tokens whose KV cache came from an earlier turn (not prefilled again)
    earlier: list[list[int]] = field(default_factory=list)  # chat: its answers to turns it joined after, made first


@dataclass
class VariantAnswer:
    """One variant's answer, with what ran: its kind, the experts taking part and the coefficients applied."""

    name: str
    answer: str
    seconds: float
    new_tokens: int
    prompt_tokens: int
    notes: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    kind: VariantKind = VariantKind.EXPERT
    experts: list[str] = field(default_factory=list)
    coefficients: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind.value, "answer": self.answer, "seconds": round(self.seconds, 4),
                "new_tokens": self.new_tokens, "prompt_tokens": self.prompt_tokens, "experts": list(self.experts),
                "coefficients": self.coefficients, "notes": self.notes}


FeatureFn = Callable[[Expert, ModalInput], torch.Tensor]

# A shared prefix shorter than this is prefilled with its rows (one more pass costs more than it saves).
MIN_SHARED_PREFIX = 8


def shared_prefixes(rows: Sequence[PromptRow], n_variants: int) -> list[tuple[list[int], int]]:
    """Per variant, its rows (``k * n_variants + j`` for request k) and the positions they all start with:
    the same tokens and modality blocks (``PromptRow.keys``), under the same coefficients. Each row keeps
    at least its last position; groups of one row, or with a prefix under ``MIN_SHARED_PREFIX``, are left out."""
    groups = []
    for j in range(n_variants):
        members = list(range(j, len(rows), n_variants))
        if len(members) < 2:
            continue
        keys = [rows[i].keys for i in members]
        limit = min(len(k) for k in keys) - 1
        length = 0
        while length < limit and all(k[length] is not None and k[length] == keys[0][length] for k in keys):
            length += 1
        if length >= MIN_SHARED_PREFIX:
            groups.append((members, length))
    return groups


def encode_with_registry(expert: Expert, item: ModalInput) -> torch.Tensor:
    """Features of ``item`` from the expert's frozen encoder, computed once per (input, encoder).

    The input is read in the form the encoder was trained on (its decoder limits: Point-BERT's
    8192 points, LanguageBind's 8 frames), decoded once and kept by the input.
    """
    encoder = expert.bind_encoder()
    return item.features(expert.encoder_key, lambda: encoder.encode(item.decoded(expert.input_limits).data))


class ComposedModel:
    """A base LLM with routed expert deltas; answers many variants in one batch.

    Args:
        base: a loaded base LLM (``composition.base_llm.BaseLLM`` or anything with the same
            fields: model, tokenizer, template, eos_token_ids, name, sha256).
        experts: experts to attach now.
        feature_fn: turns (expert, input) into encoder features; defaults to the encoder registry.
        targets: the linear layer names (last component) that may carry deltas.
        kv_cache_bytes: memory for conversations' KV caches (least recently used conversation out first).
    """

    def __init__(self, base, experts: Iterable[Expert] = (), *, feature_fn: FeatureFn | None = None,
                 targets: Sequence[str] = LLAMA_TARGETS, kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES) -> None:
        self.base = base
        self.model = base.model
        self.router = Router()
        self.slots = SlotTable()
        self.feature_fn = feature_fn or encode_with_registry
        if any(isinstance(m, RoutedLinear) for m in self.model.modules()):
            raise CompositionError("this base model already serves another ComposedModel (its layers are routed); "
                                   "reuse that ComposedModel or load a fresh base.")
        names = [n for n, m in self.model.named_modules() if n.rsplit(".", 1)[-1] in targets and isinstance(m, torch.nn.Linear)]
        self.layers = attach_routed_linears(self.model, names, self.router)
        contiguous_head_input(self.model)
        self.linear_shapes = {n: (layer.out_features, layer.in_features) for n, layer in self.layers.items()}
        # The coefficient table's module axis (used when a λ or μ varies by layer or module).
        n_layers = getattr(getattr(self.model, "config", None), "num_hidden_layers", None)
        self.layout = ModuleLayout.of(self.layers, n_layers if isinstance(n_layers, int) and n_layers > 0 else None)
        for position, module in enumerate(self.layout.modules):
            self.layers[module].position = position
        self.experts: dict[str, Expert] = {}
        self._dense_results: OrderedDict[tuple, int] = OrderedDict()  # dense slots of non-linear merges
        self._core_results: OrderedDict[tuple, int] = OrderedDict()  # low-rank slots of core-space merges
        self._baseline: torch.Tensor | None = None  # coefficients written into the weights
        self.materialized_variant: str | None = None
        # One forward pass at a time: the router is per-model state during a pass.
        self.lock = threading.RLock()
        # Conversations' KV caches, by their tokens and coefficients (see generate_rows(session=...)).
        self.kv_cache = KVCacheStore(kv_cache_bytes)
        for expert in experts:
            self.add_expert(expert)

    # --- experts ------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def load_expert(self, folder) -> Expert:
        expert = load_expert(folder, base_sha256=getattr(self.base, "sha256", None),
                             linear_shapes=self.linear_shapes, hidden_size=self.hidden_size)
        self.add_expert(expert)
        return expert

    def add_expert(self, expert: Expert) -> None:
        from .lora import check_against_base

        if expert.name in self.experts:
            raise CompositionError(f"an expert named {expert.name!r} is already loaded; rename one of them.")
        if expert.config.projector.out_dim != self.hidden_size:
            raise CompositionError(f"expert {expert.name!r} projects to {expert.config.projector.out_dim} dims but the base "
                                   f"model's hidden size is {self.hidden_size}; it was made for another base.")
        for delta_name, delta in expert.deltas.items():
            check_against_base(delta, self.linear_shapes, what=f"expert {expert.name!r}, adapter {delta_name}/")
        weight = self.model.get_input_embeddings().weight
        expert.projector.to(weight.device)
        with self.lock:
            for delta_name, delta in expert.deltas.items():
                slot = self.slots.slot((expert.name, delta_name))
                for module in delta.modules:
                    self.layers[module].set_lowrank(slot, delta.A[module], delta.B[module], delta.scale)
            self.experts[expert.name] = expert

    def remove_expert(self, name: str) -> None:
        with self.lock:
            expert = self.experts.pop(name, None)
            if expert is None:
                return
            for delta_name in expert.deltas:
                slot = self.slots.index.get((name, delta_name))
                for layer in self.layers.values():
                    layer.remove_slot(slot)
            merged = list(self._dense_results.values()) + list(self._core_results.values())
            self._dense_results.clear()  # they may include this expert
            self._core_results.clear()
            for layer in self.layers.values():
                for slot in merged:
                    layer.remove_slot(slot)

    def subset(self, names: Iterable[str]) -> "ComposedModel":
        """A view that composes only the named experts (a user's selection).

        The view shares everything heavy with this model (weights, routed layers, slots,
        dense-merge cache, lock); only the expert list differs. It takes no lock (a running
        generation holds it until its last token): the expert mapping is copied in one step,
        atomic under the GIL, and every run on the view takes the shared lock itself.
        """
        names = list(names)
        experts = dict(self.experts)
        unknown = [n for n in names if n not in experts]
        if unknown:
            raise CompositionError(f"expert {unknown[0]!r} is not loaded; loaded experts: {sorted(experts)}.")
        view = copy.copy(self)
        view.experts = {n: e for n, e in experts.items() if n in names}
        return view

    # --- variants -----------------------------------------------------------
    def plan(self, present: Iterable[str] = (), variants: Sequence[str | VariantSpec] | None = None,
             coefficients: Coefficients | None = None, *, selection: Iterable[str] | None = None,
             methods: Iterable[str] = (), hyper=None, experts_without_input: bool = False,
             merge_all_experts: bool = False) -> Plan:
        """The variants a request runs and the coefficients they apply (see ``composition.plan``).

        ``selection`` names the experts that may take part (default: all loaded). Planning
        takes no lock and computes nothing dense, so it never waits for a running generation.
        """
        experts = dict(self.experts)  # one atomic copy: an expert added meanwhile is wholly in or out
        if selection is not None:
            names = list(selection)
            unknown = [n for n in names if n not in experts]
            if unknown:
                raise CompositionError(f"expert {unknown[0]!r} is not loaded; loaded experts: {sorted(experts)}.")
            experts = {n: e for n, e in experts.items() if n in names}
        return make_plan(list(experts.values()), self.slots, present, variants, coefficients, methods=methods, hyper=hyper,
                         experts_without_input=experts_without_input, merge_all_experts=merge_all_experts,
                         layout=self.layout)

    def default_variants(self, input_modalities: Iterable[str]) -> list[str]:
        """The names of the variants a request with these inputs runs by default."""
        return self.plan(input_modalities).names

    def resolve(self, variants: Sequence[str | VariantSpec], coefficients: Coefficients, input_modalities: set[str]) -> list[ResolvedVariant]:
        """Plan ``variants`` and compute the dense merges they need (the engine's run-time step)."""
        plan = self.plan(input_modalities, variants, coefficients)
        self.prepare_dense(plan.variants)
        return plan.variants

    def prepare_dense(self, variants: Sequence[ResolvedVariant]) -> None:
        """Compute (or reuse) the dense merge result of every non-linear method among ``variants``."""
        in_use: set[int] = set()  # dense slots this request needs: never evicted while it runs
        for rv in variants:
            if rv.dense is not None:
                in_use.add(self._fill_dense(rv, in_use))

    def _fill_dense(self, rv: ResolvedVariant, in_use: set[int]) -> int:
        """Compute (or reuse) the per-layer result of a non-linear merge method; returns its slot.

        Dense results are model-sized, so only a few are kept; core-space results are low-rank
        slots, so more are. The least recently used one goes, unless this request or the
        materialized weights still use it.
        """
        from .methods import layer_seed, merge_deltas
        from .methods.core_space import core_merge

        req = rv.dense
        core = req.space == "core"
        cache, limit = (self._core_results, MAX_CORE_RESULTS) if core else (self._dense_results, MAX_DENSE_RESULTS)
        key = (req.method, req.space, tuple(sorted(req.hyper.items())), tuple(req.slots), tuple(req.weights), req.seed,
               req.module_weights)
        with self.lock:
            if key in cache:
                cache.move_to_end(key)
                slot = cache[key]
            else:
                pinned = set(in_use)
                if self._baseline is not None:
                    used = self._baseline if self._baseline.dim() == 1 else self._baseline.abs().sum(0)
                    pinned |= {i for i, c in enumerate(used.tolist()) if c != 0.0}
                evictable = [k for k, v in cache.items() if v not in pinned]
                while evictable and len(cache) >= limit:
                    old = cache.pop(evictable.pop(0))
                    for layer in self.layers.values():
                        layer.remove_slot(old)
                slot = self.slots.slot(("dense" if not core else "core", repr(key)))
                for name, layer in self.layers.items():
                    # A stable per-layer seed so random methods (DARE) differ by layer yet repeat exactly.
                    seed = layer_seed(req.seed, name)
                    weights = req.weights_at(layer.position)  # a schedule's weights at this module
                    if core:
                        # An expert with no delta at this layer takes no part here (dense passes zeros instead).
                        present = [(s, w) for s, w in zip(req.slots, weights) if s in layer.lowrank]
                        if present:
                            A, B, scale = core_merge(req.method, [(layer.lowrank[s].A, layer.lowrank[s].B_scaled, 1.0)
                                                                  for s, _ in present], [w for _, w in present], req.hyper,
                                                     seed=seed)
                            layer.set_lowrank(slot, A, B, scale)
                        continue
                    inputs = [layer.slot_delta(s) for s in req.slots]
                    if all(d is None for d in inputs):
                        continue
                    zeros = torch.zeros(layer.out_features, layer.in_features, device=layer.weight.device)  # slot_delta is fp32
                    inputs = [d if d is not None else zeros for d in inputs]
                    layer.set_dense(slot, merge_deltas(req.method, inputs, weights, seed=seed, **req.hyper))
                cache[key] = slot
        for route in rv.dense_routes:
            rv.routes[route] = {slot: 1.0}
        return slot

    def coef_table(self, variants: Sequence[ResolvedVariant]) -> torch.Tensor:
        """``(len(variants) * n_routes, n_slots)``: row ``v * n_routes + route`` holds that route's coefficients.

        With a λ or μ that varies by module (a schedule, or such a merge written into the weights)
        the table gets a module axis, ``(rows, n_modules, n_slots)`` in ``layout`` order, and each
        routed layer reads its own column (``composition.routing``).
        """
        names = route_names()
        n_slots = max(len(self.slots), 1)
        per_module = any(rv.module_routes for rv in variants) or (self._baseline is not None and self._baseline.dim() == 2)
        shape = (len(variants) * len(names), len(self.layout.modules), n_slots) if per_module else (len(variants) * len(names), n_slots)
        table = torch.zeros(shape)
        for v, rv in enumerate(variants):
            for r, route in enumerate(names):
                # (slots,) broadcasts over the module axis; a route that varies by module fills it
                table[v * len(names) + r, ..., : len(self.slots)] = self.route_coefficients(rv, route)
        if self._baseline is not None:
            base = torch.zeros(self._baseline.shape[:-1] + (n_slots,))
            base[..., : self._baseline.shape[-1]] = self._baseline
            table -= base
        weight = self.model.get_input_embeddings().weight
        return table.to(weight.device, weight.dtype)

    # --- prompts ------------------------------------------------------------
    def encode_inputs(self, variants: Sequence[ResolvedVariant], inputs: Sequence[ModalInput]) -> dict[tuple[str, int], torch.Tensor]:
        """Modality blocks keyed by (expert name, input index); each encoder runs once per input."""
        features: dict[tuple, torch.Tensor] = {}
        blocks: dict[tuple[str, int], torch.Tensor] = {}
        for rv in variants:
            for i, item in enumerate(inputs):
                expert = rv.block_experts.get(item.modality)
                if expert is None or (expert.name, i) in blocks:
                    continue
                ref = expert.config.encoder
                fkey = (ref.kind, ref.source, expert.name if expert.encoder_state else "", i)
                if fkey not in features:
                    features[fkey] = self.feature_fn(expert, item)
                blocks[(expert.name, i)] = expert.modality_block(features[fkey])
        return blocks

    def prompt_rows(self, question: str, inputs: Sequence[ModalInput], variants: Sequence[ResolvedVariant], *,
                    message_fn: Callable[[str, list[str]], str] = user_message, answer_prefix: str = "") -> list[PromptRow]:
        """One prompt row per variant; ``message_fn(question, modalities it reads)`` writes the user turn
        (default: the studio's one line per input; the MCUB runner passes the paper's verbatim turn);
        ``answer_prefix`` is text the answer is made to start with."""
        request = RowRequest(question, tuple(inputs), message_fn, answer_prefix)
        return [row for row, _ in self._request_rows(request, variants)]

    @property
    def context_window(self) -> int | None:
        """The base's context length in tokens (None when its config does not say)."""
        return getattr(getattr(self.model, "config", None), "max_position_embeddings", None)

    def _request_rows(self, request: "RowRequest", variants: Sequence[ResolvedVariant],
                      reserve: int = 0) -> list[tuple[PromptRow, list[str]]]:
        """Per variant: the request's row (every turn, its own earlier answers), and notes about it.

        A conversation longer than the base's context (with ``reserve`` tokens left for the answer)
        drops its oldest turns, and the note names them; when the last turn alone does not fit the
        context, it is an error that says so.
        """
        turns = [*request.history, Turn(request.question, tuple(request.inputs))]
        items = [item for turn in turns for item in turn.inputs]
        blocks = self.encode_inputs(variants, items)
        embed = self.model.get_input_embeddings()
        window = self.context_window
        out = []
        for rv in variants:
            answers = [list(a) for a in request.answers.get(rv.name, ())]
            if len(answers) != len(turns) - 1:
                raise CompositionError(f"variant {rv.name!r} has {len(answers)} earlier answer(s) for a conversation of "
                                       f"{len(turns)} turns; every earlier turn needs its answer.")
            for first in range(len(turns)):
                row = self._turns_row(turns, first, answers, rv, blocks, request, embed)
                if window is None or row.length + reserve <= window or first == len(turns) - 1:
                    break
            if window is not None and row.length > window:
                raise CompositionError(f"the last turn alone takes {row.length} tokens with its inputs: over the base's "
                                       f"context of {window} tokens. Shorten the question or give fewer inputs.")
            notes = []
            if first:
                dropped = "turn 1" if first == 1 else f"turns 1–{first}"
                notes.append(f"{dropped} of the conversation were left out: with them it outgrew the base's context of "
                             f"{window} tokens.")
            out.append((row, notes))
        return out

    def _turns_row(self, turns: list["Turn"], first: int, answers: list[list[int]], rv: ResolvedVariant, blocks: dict,
                   request: "RowRequest", embed) -> PromptRow:
        """The row of ``turns[first:]`` for one variant: its messages, its answers, its modality blocks."""
        messages, per_modality, keys = [], {}, {}
        offset = sum(len(t.inputs) for t in turns[:first])
        for turn in turns[first:]:
            taken = [(offset + k, item) for k, item in enumerate(turn.inputs) if item.modality in rv.block_experts]
            offset += len(turn.inputs)
            messages.append(request.message_fn(turn.text, [item.modality for _, item in taken]))
            for modality in dict.fromkeys(item.modality for _, item in taken):  # message order: by modality, then given order
                for i, item in ((i, it) for i, it in taken if it.modality == modality):
                    expert = rv.block_experts[modality]
                    per_modality.setdefault(modality, []).append(blocks[(expert.name, i)])
                    keys.setdefault(modality, []).append((item.digest or id(item), expert.name))
        pieces = self.base.template.conversation_pieces(messages)
        pieces[-1] += request.answer_prefix
        return build_conversation_row(pieces, answers[first:], per_modality, self.base.tokenizer, embed, keys)

    def routed_batch(self, rows: Sequence[PromptRow]) -> RoutedBatch:
        names = route_names()
        index = {r: i for i, r in enumerate(names)}
        route_ids = [torch.tensor([v * len(names) + index[r] for r in row.routes]) for v, row in enumerate(rows)]
        text_ids = torch.tensor([v * len(names) for v in range(len(rows))])
        return pad_rows([row.embeds for row in rows], route_ids, text_ids)

    # --- running ------------------------------------------------------------
    def compose(self, plan: Plan) -> torch.Tensor:
        """Online composition of a plan: its dense merges computed (or reused) and its coefficient table
        built, ``(variants × routes, slots)``. What a coefficient change costs; generation does it itself.

        Takes the model's lock only to compute a missing dense merge, so it never waits for a
        running generation (the app times every slider move with it).
        """
        self.prepare_dense(plan.variants)
        return self.coef_table(plan.variants)

    def generate_rows(self, requests: Sequence[RowRequest], plan: Plan, generation: GenerationConfig | None = None, *,
                      on_step: Callable[[list[list[str]]], None] | None = None, should_stop: Callable[[], bool] | None = None,
                      keep_logits: bool = False, session: str | None = None) -> list[list[RowAnswer]]:
        """The batch entry: every request answered by every variant of ``plan``, in one batch.

        Compare (one request), conversations, the evaluation runner (a chunk of items), the
        benchmarks and the training tools all come through here; nothing outside the engine
        assembles a batch.

        Args:
            requests: the prompts (each with its own inputs, of the modalities ``plan`` was made for;
                a conversation's inputs are those of all its turns).
            plan: the variants and their coefficients (``plan()``).
            generation: decoding settings (default greedy, 64 new tokens).
            on_step: after each decoding step, the texts so far, ``[request][variant]`` (streaming).
            should_stop: returning True ends generation after the current step (a user cancelling).
            keep_logits: each answer keeps the logits of its first generated position (scoring tools).
            session: reuse KV caches (``self.kv_cache``): a row continues the longest stored cache of
                its own tokens and coefficients, and its cache after this answer is kept under
                ``session`` (a conversation's id) for the next turn. None: no reuse.
        Returns:
            ``answers[request][variant]``, variants in plan order.
        """
        requests = list(requests)
        for request in requests:
            present = {item.modality for item in request.all_inputs}
            if set(plan.present) != present:
                raise CompositionError(f"the plan was made for inputs {sorted(plan.present)} but a request has "
                                       f"{sorted(present)}; plan again with these inputs.")
        return self._generate(requests, plan, generation, on_step=on_step, should_stop=should_stop,
                              keep_logits=keep_logits, session=session)

    def chat(self, turns: Sequence[Turn], plan: Plan, generation: GenerationConfig | None = None,
             answers: Mapping[str, Sequence[Sequence[int]]] | None = None, *, session: str | None = None,
             on_step: Callable[[list[str]], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> list[RowAnswer]:
        """The last of ``turns`` answered by every variant of ``plan``, each after its own earlier answers.

        Args:
            turns: the conversation's user turns, oldest first; files may come in any turn.
            plan: planned for the modalities of all the turns' inputs.
            answers: per variant, its answers (token ids) to the earlier turns. A variant with fewer
                (one that joined the conversation later) first answers the turns it missed, on its own.
            session: the conversation's id: each variant continues its KV cache from the last turn
                (see ``generate_rows``); None prefills every turn again.
            on_step: the texts so far, one per variant, after each decoding step.
        Returns:
            one answer per variant, in plan order; ``notes`` say when old turns were left out, and
            ``earlier`` holds the answers a variant gave now to the turns it had missed.
        """
        turns = list(turns)
        if not turns:
            raise CompositionError("a conversation needs at least one turn; type a message.")
        present = {item.modality for turn in turns for item in turn.inputs}
        if set(plan.present) != present:
            raise CompositionError(f"the plan was made for inputs {sorted(plan.present)} but the conversation has "
                                   f"{sorted(present)}; plan again with these inputs.")
        histories = {rv.name: [list(a) for a in (answers or {}).get(rv.name, ())][: len(turns) - 1] for rv in plan.variants}
        given = {name: len(h) for name, h in histories.items()}
        for index, rv in enumerate(plan.variants):  # a variant that joined later answers what it missed first
            for k in range(len(histories[rv.name]), len(turns) - 1):
                request = RowRequest(turns[k].text, turns[k].inputs, history=tuple(turns[:k]),
                                     answers={rv.name: histories[rv.name]})
                (missed,) = self._generate([request], plan.only([index]), generation, session=session)[0]
                histories[rv.name].append(missed.token_ids)
        request = RowRequest(turns[-1].text, turns[-1].inputs, history=tuple(turns[:-1]), answers=histories)
        step_cb = (lambda texts: on_step(texts[0])) if on_step is not None else None  # noqa: E731
        answered = self._generate([request], plan, generation, on_step=step_cb, should_stop=should_stop, session=session)[0]
        for answer in answered:
            answer.earlier = histories[answer.variant.name][given[answer.variant.name]:]
        return answered

    def _generate(self, requests: list[RowRequest], plan: Plan, generation: GenerationConfig | None, *,
                  on_step=None, should_stop=None, keep_logits: bool = False, session: str | None = None) -> list[list[RowAnswer]]:
        generation = generation or GenerationConfig()
        resolved = plan.variants
        if not requests or not resolved:
            raise CompositionError("nothing to generate: a batch needs at least one request and one variant.")
        v = len(resolved)
        with self.lock:
            start = time.perf_counter()
            self.prepare_dense(resolved)
            built = [pair for request in requests for pair in self._request_rows(request, resolved, generation.max_new_tokens)]
            rows = [row for row, _ in built]
            table = self.coef_table(list(resolved) * len(requests))
            step_cb = None
            if on_step is not None:
                step_cb = lambda toks: on_step([[self.decode(toks[k * v + j]) for j in range(v)]  # noqa: E731
                                                for k in range(len(requests))])
            first: list[torch.Tensor] = []
            reused = [0] * len(rows)
            if session is None:
                scoring = {"on_first_logits": first.append} if keep_logits else {}
                batch = self.routed_batch(rows)
                if len(requests) > 1:  # one variant's rows for several requests start alike: prefill that once
                    batch.shared_prefixes = shared_prefixes(rows, v)
                tokens = generate_batch(self.model, self.router, batch, table, generation,
                                        self.base.eos_token_ids, step_cb, should_stop, **scoring)
            else:
                tokens, reused = self._generate_reusing(rows, [resolved[i % v] for i in range(len(rows))], table, generation,
                                                        session, step_cb, should_stop)
            seconds = time.perf_counter() - start
        return [[RowAnswer(rv, self.decode(tokens[k * v + j]), tokens[k * v + j], rows[k * v + j].length, seconds,
                           first[0][k * v + j].float() if first else None, built[k * v + j][1], reused[k * v + j])
                 for j, rv in enumerate(resolved)] for k in range(len(requests))]

    def _generate_reusing(self, rows: list[PromptRow], variants: list[ResolvedVariant], table: torch.Tensor,
                          generation: GenerationConfig, session: str, step_cb, should_stop) -> tuple[list[list[int]], list[int]]:
        """Generate, each row continuing the longest stored KV cache of its tokens and coefficients; then store
        every row's cache (prompt and answer) under ``session``."""
        names = route_names()
        index = {r: i for i, r in enumerate(names)}
        signatures = [self._cache_signature(rv) for rv in variants]
        inputs, reused = [], []
        for v, (row, signature) in enumerate(zip(rows, signatures)):
            route_ids = torch.tensor([v * len(names) + index[r] for r in row.routes])
            past = self.kv_cache.lookup(signature, row.keys) if all(k is not None for k in row.keys) else None
            start = 0 if past is None else past.length
            reused.append(start)
            inputs.append(RowInput(row.embeds[start:], route_ids[start:], v * len(names),
                                   None if past is None else past.cache, start))
        decoded = generate_continuing(self.model, self.router, inputs, table, generation, self.base.eos_token_ids,
                                      step_cb, should_stop)
        for i, (row, signature) in enumerate(zip(rows, signatures)):
            if not all(k is not None for k in row.keys):
                continue
            fed = decoded.fed[i]
            cache = row_cache(decoded.cache, i, decoded.width - row.length, decoded.width + fed)
            self.kv_cache.store(signature, tuple(row.keys) + tuple(decoded.tokens[i][:fed]), cache, session)
        return decoded.tokens, reused

    def _cache_signature(self, rv: ResolvedVariant) -> tuple:
        """What a KV cache was computed with besides its tokens: the variant's coefficients on every route
        (dense merges by slot) and what is written into the weights."""
        routes = tuple(sorted((route, tuple(sorted(coefs.items()))) for route, coefs in rv.routes.items()))
        per_module = tuple(sorted((route, tuple(sorted(coefs.items()))) for route, coefs in rv.module_routes.items()))
        baseline = None if self._baseline is None else tuple(self._baseline.flatten().tolist())
        return rv.name, routes, per_module, baseline

    def compare(self, question: str, inputs: Sequence[ModalInput] = (), variants: Sequence[str | VariantSpec] | Plan | None = None,
                coefficients: Coefficients | None = None, config: GenerationConfig | None = None, *, batched: bool = True,
                on_step: Callable[[list[str]], None] | None = None, should_stop: Callable[[], bool] | None = None) -> list[VariantAnswer]:
        """Answer ``question`` with every variant, side by side (one batch unless ``batched=False``).

        ``variants``: a ``Plan`` (from ``plan``), names or specs, or None for the defaults.
        """
        if not isinstance(question, str) or not question.strip():
            raise CompositionError("the question is empty; type a question for the models to answer.")
        present = {item.modality for item in inputs}
        if isinstance(variants, Plan):
            plan = variants
        else:
            plan = self.plan(present, list(variants) if variants else None, coefficients)
        request = RowRequest(question, tuple(inputs))
        groups = [plan] if batched else [plan.only([i]) for i in range(len(plan.variants))]
        texts = [""] * len(plan.variants)
        answers: list[VariantAnswer] = []
        for g, group in enumerate(groups):
            offset = 0 if batched else g

            def partial(step: list[list[str]], offset=offset) -> None:
                texts[offset: offset + len(step[0])] = step[0]
                on_step(list(texts))

            rows = self.generate_rows([request], group, config, on_step=partial if on_step else None, should_stop=should_stop)[0]
            answers += [VariantAnswer(a.variant.name, a.text, a.seconds, len(a.token_ids), a.prompt_tokens,
                                      self._notes(a.variant, inputs), a.token_ids, a.variant.kind, a.variant.experts,
                                      a.variant.coefficients_json()) for a in rows]
        return answers

    def decode(self, ids: list[int]) -> str:
        return self.base.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @staticmethod
    def _notes(rv: ResolvedVariant, inputs: Sequence[ModalInput]) -> list[str]:
        notes = []
        given = {item.modality for item in inputs}
        for modality, expert in rv.block_experts.items():
            if modality not in given and rv.kind is VariantKind.EXPERT:
                notes.append(f"the {modality} expert got no {modality} input")
        for item in inputs:
            expert = rv.block_experts.get(item.modality)
            if expert is not None:  # what the decoder changed in the form this expert's encoder read
                form = item.decoded(expert.input_limits)
                notes += [f"{item.source_name}: {n}" if item.source_name else n for n in form.notes]
        return notes

    @torch.no_grad()
    def logits(self, question: str, inputs: Sequence[ModalInput], variants: Sequence[str] | Plan,
               coefficients: Coefficients | None = None) -> list[torch.Tensor]:
        """Prompt logits per variant, padding removed: a list of ``(T_i, vocab)`` (for tests and tools);
        ``variants``: names, or a ``Plan`` (any planning option, e.g. ``merge_all_experts``)."""
        with self.lock:
            if isinstance(variants, Plan):
                resolved = variants.variants
                self.prepare_dense(resolved)
            else:
                resolved = self.resolve(variants, coefficients or Coefficients(), {i.modality for i in inputs})
            rows = self.prompt_rows(question, inputs, resolved)
            batch = self.routed_batch(rows)
            out = prefill_logits(self.model, self.router, batch, self.coef_table(resolved))
        t = out.shape[1]
        return [out[i, t - n:].float() for i, n in enumerate(batch.lengths)]

    # --- materialization ------------------------------------------------------
    def materialize(self, variant: str, coefficients: Coefficients | None = None, input_modalities: Iterable[str] = ()) -> float:
        """Write the variant's text-route merge into the weights; returns the seconds it took.

        Every variant stays correct afterwards: the coefficient table subtracts what is in the
        weights, so modality routes (and other variants) apply only their difference.
        """
        start = time.perf_counter()
        with self.lock:
            # Resolve first: a bad request changes nothing. Each layer then rewrites its weight
            # from its kept original, so a previous merge needs no separate restore pass.
            rv = self.resolve([variant], coefficients or Coefficients(), set(input_modalities))[0]
            coef = self.route_coefficients(rv, TEXT_ROUTE)
            shared: dict = {}
            try:
                for layer in self.layers.values():
                    layer.materialize(coef, shared)
            except BaseException:
                self.dematerialize()
                raise
            self._baseline = coef
            self.materialized_variant = rv.name
        if self.model.get_input_embeddings().weight.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def route_coefficients(self, rv: ResolvedVariant, route: str) -> torch.Tensor:
        """``rv``'s coefficients on ``route`` over the slots, ``(n_slots,)``, or ``(n_modules, n_slots)`` when
        they vary by module (CPU, fp32: what ``materialize`` writes and the adapter export reads)."""
        per_module = rv.module_routes.get(route)
        coef = torch.zeros((len(self.layout.modules), len(self.slots)) if per_module else (len(self.slots),))
        for slot, c in rv.routes.get(route, {}).items():
            coef[..., slot] = c
        for slot, values in (per_module or {}).items():
            coef[:, slot] = torch.tensor(values)
        return coef

    def dematerialize(self) -> None:
        with self.lock:
            for layer in self.layers.values():
                layer.dematerialize()
            self._baseline = None
            self.materialized_variant = None
