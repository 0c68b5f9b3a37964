"""A user's composition settings (the sliders), validated, and the paper's defaults.

The settings live in the request (and in the YAML config), never in the shared model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from composition.errors import CompositionError
from composition.generate import GenerationConfig
from composition.methods import get_method
from composition.methods.registry import split_space
from composition.variants import Coefficients, in_prompt_order, text_merge_pool

MAX_LAMBDA_SLOTS = 8  # the UI pre-builds this many λ sliders; more selected experts is an error
DEFAULT_TOL = 1e-6


def selected_experts(experts: Mapping, selected: Iterable[str]) -> list:
    """The loaded experts among ``selected``, in load order."""
    chosen = set(selected or [])
    return [e for n, e in experts.items() if n in chosen]


def lambda_names(experts: Mapping, selected: Iterable[str]) -> list[str]:
    """One λ slider per expert whose text delta a text merge of the selection can use (prompt order).

    The engine owns the rule (``composition.variants.text_merge_pool``); with inputs, only
    the experts that get one take part (see ``applied_lambdas``).
    """
    pool, _ = text_merge_pool(selected_experts(experts, selected), set())
    return [e.name for e in in_prompt_order(pool.values())]


def untouched_lambdas(values: Mapping[str, float], names: Sequence[str]) -> bool:
    """True when the λ of ``names`` are all one paper default 1/j (j = 1..len(names)), or unset.

    The default λ = 1/K counts the experts that get an input, so it changes with the inputs;
    sliders still at a default made for other inputs mean "the default", not that number.
    """
    given = [values[n] for n in names if n in values]
    if not given:
        return True
    return any(all(math.isclose(v, 1 / j, abs_tol=DEFAULT_TOL) for v in given) for j in range(1, len(names) + 1))


@dataclass
class StudioSettings:
    """Everything a composition request needs besides the inputs.

    Args:
        selected: names of the experts taking part.
        lambdas: λ per expert (text merge); a value missing takes the paper default.
        mus: μ per modality.
        methods: extra merge methods shown as comparison columns (registry names).
        method_params: ``{method: {param: value}}``; missing params take the registry defaults.
        max_new_tokens, temperature, top_p, seed: generation settings.
    """

    selected: list[str] = field(default_factory=list)
    lambdas: dict[str, float] = field(default_factory=dict)
    mus: dict[str, float] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)
    method_params: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list, compare=False, repr=False)  # set on validation: renamed parameters
    max_new_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.selected = [str(n) for n in self.selected or []]
        self.methods = [str(m) for m in self.methods or []]
        self.lambdas = {str(k): float(v) for k, v in (self.lambdas or {}).items()}
        self.mus = {str(k): float(v) for k, v in (self.mus or {}).items()}
        Coefficients(self.lambdas, self.mus)  # range and modality-name checks, with the engine's messages
        for method in self.methods:
            split_space(method)  # unknown name or space -> an error listing what is accepted
        clean, self.notes = {}, []
        for method, params in (self.method_params or {}).items():
            # Hyper-parameters belong to the method, shared by its dense and @core columns.
            values, notes = get_method(split_space(method)[0]).resolve_hyper(dict(params or {}))
            clean[split_space(method)[0]] = values
            self.notes += notes  # an old name (drop_rate) still works; the note names the new one
        self.method_params = clean
        config = self.generation()  # validates max_new_tokens, temperature, top_p and seed
        self.max_new_tokens, self.seed = config.max_new_tokens, config.seed

    def generation(self) -> GenerationConfig:
        return GenerationConfig(self.max_new_tokens, float(self.temperature), float(self.top_p), self.seed)

    def coefficients(self, experts: Mapping, present: Iterable[str] = ()) -> Coefficients:
        """The request's coefficients for inputs of ``present`` modalities.

        λ values left at a paper default are omitted, so the engine applies 1/K over the
        experts that actually take part (K depends on the inputs; see ``untouched_lambdas``).
        """
        everyone = lambda_names(experts, self.selected)
        lambdas = {} if untouched_lambdas(self.lambdas, everyone) else {n: v for n, v in self.lambdas.items() if n in everyone}
        mus = {m: v for m, v in self.mus.items() if not math.isclose(v, 1.0, abs_tol=DEFAULT_TOL)}
        return Coefficients(lambdas, mus)

    def hyper(self, method: str) -> dict[str, float]:
        """The hyper-parameters of ``method`` (``ties`` or ``ties@core``): the user's, else the registry defaults."""
        name = split_space(method)[0]
        values = get_method(name).defaults()
        values.update(self.method_params.get(name, {}))
        return values


def lambda_slots(experts: Mapping, selected: Iterable[str]) -> list[str | None]:
    """Expert name per pre-built λ slider (None = hidden), at most MAX_LAMBDA_SLOTS."""
    names = lambda_names(experts, selected)
    if len(names) > MAX_LAMBDA_SLOTS:
        raise CompositionError(f"{len(names)} experts selected for the text merge; the app shows at most "
                               f"{MAX_LAMBDA_SLOTS} λ sliders. Deselect some experts.")
    return names + [None] * (MAX_LAMBDA_SLOTS - len(names))


def default_selection(experts: Mapping) -> list[str]:
    """All loaded experts (one per modality and kind is what compositions accept)."""
    return list(experts)
