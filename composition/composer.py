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
from typing import Callable, Iterable, Sequence

import torch

from .errors import CompositionError
from .expert import Expert, load_expert
from .inputs import ModalInput
from .generate import GenerationConfig, RoutedBatch, generate_batch, pad_rows, prefill_logits
from .lora import LLAMA_TARGETS
from .prompt import PromptRow, build_prompt_row, user_message
from .routing import RoutedLinear, Router, attach_routed_linears
from .plan import Plan, make_plan
from .variants import TEXT_ROUTE, Coefficients, ResolvedVariant, SlotTable, VariantKind, VariantSpec, route_names

# Each dense merge result is as large as the model's target layers: keep only a few. A core-space
# result is a low-rank slot (rank <= K·r), a few percent of that: keep more.
MAX_DENSE_RESULTS = 2
MAX_CORE_RESULTS = 8


@dataclass(frozen=True)
class RowRequest:
    """One prompt for the batch entry: the user's text and its inputs.

    ``message_fn(question, modalities read)`` writes the user turn (default: one
    ``label: <placeholder>`` line per input, then the question; the paper-fidelity
    prompt passes the human turn verbatim); ``answer_prefix`` is text the answer is made
    to start with (a scoring tool forcing "cone (" to read the next token).
    """

    question: str
    inputs: tuple[ModalInput, ...] = ()
    message_fn: Callable[[str, list[str]], str] = user_message
    answer_prefix: str = ""


@dataclass
class RowAnswer:
    """One (request, variant) answer of the batch entry."""

    variant: ResolvedVariant
    text: str
    token_ids: list[int]
    prompt_tokens: int
    seconds: float  # the whole batch's wall time
    first_logits: torch.Tensor | None = None  # (vocab,) at the first generated position, with keep_logits


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
    """

    def __init__(self, base, experts: Iterable[Expert] = (), *, feature_fn: FeatureFn | None = None,
                 targets: Sequence[str] = LLAMA_TARGETS) -> None:
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
        self.linear_shapes = {n: (layer.out_features, layer.in_features) for n, layer in self.layers.items()}
        self.experts: dict[str, Expert] = {}
        self._dense_results: OrderedDict[tuple, int] = OrderedDict()  # dense slots of non-linear merges
        self._core_results: OrderedDict[tuple, int] = OrderedDict()  # low-rank slots of core-space merges
        self._baseline: torch.Tensor | None = None  # coefficients written into the weights
        self.materialized_variant: str | None = None
        # One forward pass at a time: the router is per-model state during a pass.
        self.lock = threading.RLock()
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
                         experts_without_input=experts_without_input, merge_all_experts=merge_all_experts)

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
        key = (req.method, req.space, tuple(sorted(req.hyper.items())), tuple(req.slots), tuple(req.weights), req.seed)
        with self.lock:
            if key in cache:
                cache.move_to_end(key)
                slot = cache[key]
            else:
                pinned = set(in_use)
                if self._baseline is not None:
                    pinned |= {i for i, c in enumerate(self._baseline.tolist()) if c != 0.0}
                evictable = [k for k, v in cache.items() if v not in pinned]
                while evictable and len(cache) >= limit:
                    old = cache.pop(evictable.pop(0))
                    for layer in self.layers.values():
                        layer.remove_slot(old)
                slot = self.slots.slot(("dense" if not core else "core", repr(key)))
                for name, layer in self.layers.items():
                    # A stable per-layer seed so random methods (DARE) differ by layer yet repeat exactly.
                    seed = layer_seed(req.seed, name)
                    if core:
                        # An expert with no delta at this layer takes no part here (dense passes zeros instead).
                        present = [(s, w) for s, w in zip(req.slots, req.weights) if s in layer.lowrank]
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
                    layer.set_dense(slot, merge_deltas(req.method, inputs, req.weights, seed=seed, **req.hyper))
                cache[key] = slot
        for route in rv.dense_routes:
            rv.routes[route] = {slot: 1.0}
        return slot

    def coef_table(self, variants: Sequence[ResolvedVariant]) -> torch.Tensor:
        """``(len(variants) * n_routes, n_slots)``: row ``v * n_routes + route`` holds that route's coefficients."""
        names = route_names()
        n_slots = max(len(self.slots), 1)
        table = torch.zeros(len(variants) * len(names), n_slots)
        for v, rv in enumerate(variants):
            for r, route in enumerate(names):
                for slot, c in rv.routes.get(route, {}).items():
                    table[v * len(names) + r, slot] = c
        if self._baseline is not None:
            base = torch.zeros(n_slots)
            base[: self._baseline.numel()] = self._baseline
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
        blocks = self.encode_inputs(variants, inputs)
        rows = []
        embed = self.model.get_input_embeddings()
        for rv in variants:
            taken = [(i, item) for i, item in enumerate(inputs) if item.modality in rv.block_experts]
            message = message_fn(question, [item.modality for _, item in taken])
            prompt = self.base.template.format_prompt(message) + answer_prefix
            per_modality: dict[str, list[torch.Tensor]] = {}
            for i, item in taken:
                per_modality.setdefault(item.modality, []).append(blocks[(rv.block_experts[item.modality].name, i)])
            rows.append(build_prompt_row(prompt, per_modality, self.base.tokenizer, embed))
        return rows

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
                      keep_logits: bool = False) -> list[list[RowAnswer]]:
        """The batch entry: every request answered by every variant of ``plan``, in one batch.

        Compare (one request), the evaluation runner (a chunk of items), the benchmarks and the
        training tools all come through here; nothing outside the engine assembles a batch.

        Args:
            requests: the prompts (each with its own inputs, of the modalities ``plan`` was made for).
            plan: the variants and their coefficients (``plan()``).
            generation: decoding settings (default greedy, 64 new tokens).
            on_step: after each decoding step, the texts so far, ``[request][variant]`` (streaming).
            should_stop: returning True ends generation after the current step (a user cancelling).
            keep_logits: each answer keeps the logits of its first generated position (scoring tools).
        Returns:
            ``answers[request][variant]``, variants in plan order.
        """
        generation = generation or GenerationConfig()
        requests = list(requests)
        resolved = plan.variants
        if not requests or not resolved:
            raise CompositionError("nothing to generate: a batch needs at least one request and one variant.")
        for request in requests:
            present = {item.modality for item in request.inputs}
            if set(plan.present) != present:
                raise CompositionError(f"the plan was made for inputs {sorted(plan.present)} but a request has "
                                       f"{sorted(present)}; plan again with these inputs.")
        v = len(resolved)
        with self.lock:
            start = time.perf_counter()
            self.prepare_dense(resolved)
            rows = [row for request in requests for row in self._request_rows(request, resolved)]
            table = self.coef_table(list(resolved) * len(requests))
            step_cb = None
            if on_step is not None:
                step_cb = lambda toks: on_step([[self.decode(toks[k * v + j]) for j in range(v)]  # noqa: E731
                                                for k in range(len(requests))])
            first: list[torch.Tensor] = []
            scoring = {"on_first_logits": first.append} if keep_logits else {}
            tokens = generate_batch(self.model, self.router, self.routed_batch(rows), table, generation,
                                    self.base.eos_token_ids, step_cb, should_stop, **scoring)
            seconds = time.perf_counter() - start
        return [[RowAnswer(rv, self.decode(tokens[k * v + j]), tokens[k * v + j], rows[k * v + j].length, seconds,
                           first[0][k * v + j].float() if first else None)
                 for j, rv in enumerate(resolved)] for k in range(len(requests))]

    def _request_rows(self, request: RowRequest, resolved: Sequence[ResolvedVariant]) -> list[PromptRow]:
        return self.prompt_rows(request.question, request.inputs, resolved, message_fn=request.message_fn,
                                answer_prefix=request.answer_prefix)

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
    def logits(self, question: str, inputs: Sequence[ModalInput], variants: Sequence[str],
               coefficients: Coefficients | None = None) -> list[torch.Tensor]:
        """Prompt logits per variant, padding removed: a list of ``(T_i, vocab)`` (for tests and tools)."""
        with self.lock:
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
            coef = torch.zeros(len(self.slots))
            for slot, c in rv.routes[TEXT_ROUTE].items():
                coef[slot] = c
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

    def dematerialize(self) -> None:
        with self.lock:
            for layer in self.layers.values():
                layer.dematerialize()
            self._baseline = None
            self.materialized_variant = None
