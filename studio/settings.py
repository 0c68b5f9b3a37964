"""A user's composition settings (the sliders), validated, and the paper's defaults.

The settings live in the request (and in the YAML config), never in the shared model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from composition.errors import CompositionError
from composition.generate import GenerationConfig
from composition.methods import get_method, list_methods
from composition.variants import Coefficients

MAX_LAMBDA_SLOTS = 8  # the UI pre-builds this many λ sliders; more selected experts is an error
DEFAULT_TOL = 1e-6


def text_merge_experts(experts: Mapping, selected: Iterable[str]) -> list[str]:
    """The selected experts whose text deltas a text merge combines (decoupled ones, else shared ones).

    Mirrors composition.variants.resolve_variant: DAMC and the methods merge decoupled
    experts when there are any, else the shared ones.
    """
    from modalities import MODALITY_NAMES

    order = {m: i for i, m in enumerate(MODALITY_NAMES)}  # prompt order: image, audio, video, point
    chosen = sorted((experts[n] for n in selected if n in experts), key=lambda e: order.get(e.modality, len(order)))
    decoupled = [e.name for e in chosen if e.training == "decoupled"]
    return decoupled or [e.name for e in chosen if e.training == "shared"]


def paper_lambdas(names: list[str]) -> dict[str, float]:
    """λ_i = 1/K over the K experts merged (DAMC's default)."""
    return {n: 1.0 / len(names) for n in names} if names else {}


def paper_mus(modalities: Iterable[str]) -> dict[str, float]:
    """μ = 1 for every modality (DAMC's default)."""
    return {m: 1.0 for m in modalities}


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
            get_method(method)  # unknown name -> error listing the registered ones
        clean = {}
        for method, params in (self.method_params or {}).items():
            spec = get_method(method)
            declared = {p.name: p for p in spec.params}
            for name, value in (params or {}).items():
                if name not in declared:
                    raise CompositionError(f"method {method!r} has no hyper-parameter {name!r}; it takes {sorted(declared) or 'none'}.")
                clean.setdefault(method, {})[name] = declared[name].validate(value, method)
        self.method_params = clean
        if isinstance(self.max_new_tokens, float) and self.max_new_tokens.is_integer():
            self.max_new_tokens = int(self.max_new_tokens)
        self.generation()  # validates max_new_tokens, temperature, top_p
        if not isinstance(self.seed, int) or self.seed < 0:
            if isinstance(self.seed, float) and self.seed.is_integer() and self.seed >= 0:
                self.seed = int(self.seed)
            else:
                raise CompositionError(f"seed={self.seed!r}; expected a non-negative integer.")

    def generation(self) -> GenerationConfig:
        return GenerationConfig(self.max_new_tokens, float(self.temperature), float(self.top_p), self.seed)

    def coefficients(self, experts: Mapping) -> Coefficients:
        """The request's coefficients; λ left at the paper default is omitted so the engine uses 1/K
        over the experts that actually get an input (K depends on the inputs, the sliders cannot)."""
        names = text_merge_experts(experts, self.selected)
        lambdas = {n: self.lambdas[n] for n in names if n in self.lambdas}
        default = paper_lambdas(names)
        if all(math.isclose(lambdas.get(n, default[n]), default[n], abs_tol=DEFAULT_TOL) for n in names):
            lambdas = {}
        mus = {m: v for m, v in self.mus.items() if not math.isclose(v, 1.0, abs_tol=DEFAULT_TOL)}
        return Coefficients(lambdas, mus)

    def hyper(self, method: str) -> dict[str, float]:
        values = get_method(method).defaults()
        values.update(self.method_params.get(method, {}))
        return values


def method_specs() -> list[dict]:
    """The registry as plain data for the UI: name, label, help, params with min/max/step/default."""
    return [{"name": m.name, "label": m.label, "help": m.help, "linear": m.linear,
             "params": [{"name": p.name, "default": p.default, "minimum": p.minimum, "maximum": p.maximum,
                         "step": p.step, "help": p.help, "kind": p.kind} for p in m.params]}
            for m in list_methods()]


def lambda_slots(experts: Mapping, selected: Iterable[str]) -> list[str | None]:
    """Expert name per pre-built λ slider (None = hidden), at most MAX_LAMBDA_SLOTS."""
    names = text_merge_experts(experts, selected)
    if len(names) > MAX_LAMBDA_SLOTS:
        raise CompositionError(f"{len(names)} experts selected for the text merge; the app shows at most "
                               f"{MAX_LAMBDA_SLOTS} λ sliders. Deselect some experts.")
    return names + [None] * (MAX_LAMBDA_SLOTS - len(names))


def default_selection(experts: Mapping) -> list[str]:
    """All loaded experts (one per modality and kind is what compositions accept)."""
    return list(experts)
