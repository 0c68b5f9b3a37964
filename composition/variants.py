"""Variants: which deltas each token route uses, with which coefficient (DESIGN.md §1).

A variant resolves to one sparse coefficient vector over delta slots per *route*: its text
tokens (generated tokens are text too) and its tokens of each modality block.

- ``expert:<name>``: its own deltas (shared D, or text T / modality M), only its own inputs.
- ``NaiveMC`` (shared experts): every token uses ``Σ_i D_i / K``, the exact mean of the deltas.
- ``DAMC`` (decoupled experts): text uses ``Σ_i λ_i T_i``; tokens of modality m_i use ``μ_i M_i``.
- a registry method on the text deltas (decoupled experts; modality deltas kept as in
  DAMC), or on the shared deltas for every token when only shared experts take part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from .errors import CompositionError
from .expert import Expert

NAIVE = "NaiveMC"
DAMC = "DAMC"
EXPERT_PREFIX = "expert:"
TEXT_ROUTE = "text"
COEF_RANGE = (-4.0, 4.0)


def route_names() -> tuple[str, ...]:
    from modalities import MODALITY_NAMES

    return (TEXT_ROUTE, *MODALITY_NAMES)


@dataclass(frozen=True)
class Coefficients:
    """The app's sliders. λ per expert name (text merge), μ per modality (modality deltas).

    Missing entries take the paper's defaults: λ = 1/K over the experts taking part, μ = 1.
    """

    lambdas: Mapping[str, float] = field(default_factory=dict)
    mus: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label, mapping in (("λ", self.lambdas), ("μ", self.mus)):
            for key, value in mapping.items():
                if not isinstance(value, (int, float)) or not math.isfinite(value) or not COEF_RANGE[0] <= value <= COEF_RANGE[1]:
                    raise CompositionError(f"{label} for {key!r} is {value!r}; expected a finite number in [{COEF_RANGE[0]}, {COEF_RANGE[1]}].")
        known = set(route_names()) - {TEXT_ROUTE}
        unknown = sorted(set(self.mus) - known)
        if unknown:
            raise CompositionError(f"μ given for unknown modality {unknown[0]!r}; expected one of {sorted(known)}.")

    def lam(self, expert: str, k: int) -> float:
        return float(self.lambdas.get(expert, 1.0 / k))

    def mu(self, modality: str) -> float:
        return float(self.mus.get(modality, 1.0))


@dataclass(frozen=True)
class VariantSpec:
    """What a user asks for by name: ``NaiveMC``, ``DAMC``, ``expert:<name>`` or a method name."""

    name: str
    kind: str  # "naive" | "damc" | "expert" | "method"
    expert: str | None = None
    method: str | None = None
    hyper: tuple[tuple[str, float], ...] = ()

    @staticmethod
    def parse(name: str, hyper: Mapping[str, float] | None = None) -> "VariantSpec":
        from .methods import get_method, list_methods

        name = name.strip()
        if name == NAIVE:
            return VariantSpec(NAIVE, "naive")
        if name == DAMC:
            return VariantSpec(DAMC, "damc")
        if name.startswith(EXPERT_PREFIX) and len(name) > len(EXPERT_PREFIX):
            return VariantSpec(name, "expert", expert=name[len(EXPERT_PREFIX):])
        if name in {m.name for m in list_methods()}:
            method = get_method(name)
            values = {p.name: p.default for p in method.params}
            for key, value in (hyper or {}).items():
                if key not in values:
                    raise CompositionError(f"method {name!r} has no hyper-parameter {key!r}; it takes {sorted(values) or 'none'}.")
                values[key] = float(value)
            return VariantSpec(name, "method", method=name, hyper=tuple(sorted(values.items())))
        methods = ", ".join(m.name for m in list_methods())
        raise CompositionError(f"unknown variant {name!r}; expected {NAIVE}, {DAMC}, expert:<name> or a merge method ({methods}).")


@dataclass
class DenseRequest:
    """A non-linear merge the engine must compute per layer into a dense slot."""

    method: str
    hyper: dict[str, float]
    slots: list[int]  # the input delta slots, one per expert
    weights: list[float]
    seed: int = 0


@dataclass
class ResolvedVariant:
    """A variant as the engine runs it."""

    name: str
    routes: dict[str, dict[int, float]]  # route -> {slot: coefficient}
    block_experts: dict[str, Expert]  # modality -> expert whose projector makes its blocks
    dense: DenseRequest | None = None  # filled into routes[...] under a slot the engine allocates
    dense_routes: tuple[str, ...] = ()

    @property
    def modalities(self) -> set[str]:
        return set(self.block_experts)


class SlotTable:
    """Global slot indices: one per (expert, delta) and one per dense merge result."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}

    def slot(self, key: tuple[str, str]) -> int:
        if key not in self.index:
            self.index[key] = len(self.index)
        return self.index[key]

    def __len__(self) -> int:
        return len(self.index)


def _one_per_modality(experts: list[Expert], kind: str) -> dict[str, Expert]:
    by_modality: dict[str, Expert] = {}
    for expert in experts:
        if expert.training != kind:
            continue
        if expert.modality in by_modality:
            raise CompositionError(
                f"two {kind} experts for {expert.modality}: {by_modality[expert.modality].name!r} and {expert.name!r}; "
                f"a composition takes one expert per modality. Deselect one of them."
            )
        by_modality[expert.modality] = expert
    return by_modality


def participants(experts: list[Expert], kind: str, input_modalities: set[str]) -> dict[str, Expert]:
    """The experts of one training kind that a composition merges: those with an input, or all when there is none."""
    pool = _one_per_modality(experts, kind)
    if input_modalities:
        pool = {m: e for m, e in pool.items() if m in input_modalities}
    return pool


def resolve_variant(spec: VariantSpec, experts: list[Expert], slots: SlotTable, coefficients: Coefficients,
                    input_modalities: set[str]) -> ResolvedVariant:
    """Turn a spec into route coefficients over ``slots`` (allocating slots as needed)."""
    by_name = {e.name: e for e in experts}
    if spec.kind == "expert":
        expert = by_name.get(spec.expert)
        if expert is None:
            raise CompositionError(f"variant {spec.name!r}: no loaded expert is named {spec.expert!r}; loaded: {sorted(by_name)}.")
        if expert.training == "shared":
            d = slots.slot((expert.name, "shared"))
            routes = {TEXT_ROUTE: {d: 1.0}, expert.modality: {d: 1.0}}
        else:
            routes = {TEXT_ROUTE: {slots.slot((expert.name, "text")): 1.0},
                      expert.modality: {slots.slot((expert.name, "modality")): 1.0}}
        return ResolvedVariant(spec.name, routes, {expert.modality: expert})

    if spec.kind == "naive":
        pool = participants(experts, "shared", input_modalities)
        if not pool:
            raise CompositionError(f"{NAIVE} merges experts trained with shared deltas, and none is selected"
                                   f"{' for the given inputs' if input_modalities else ''}. Select shared experts or use {DAMC}.")
        mean = {slots.slot((e.name, "shared")): 1.0 / len(pool) for e in pool.values()}
        return ResolvedVariant(spec.name, {r: dict(mean) for r in (TEXT_ROUTE, *pool)}, pool)

    # DAMC and the registry methods: decoupled experts when there are any, else shared ones.
    pool = participants(experts, "decoupled", input_modalities)
    decoupled = bool(pool)
    if not decoupled:
        if spec.kind == "damc":
            raise CompositionError(f"{DAMC} needs experts trained with decoupled (text + modality) deltas, and none is selected"
                                   f"{' for the given inputs' if input_modalities else ''}. Select decoupled experts or use {NAIVE}.")
        pool = participants(experts, "shared", input_modalities)
        if not pool:
            raise CompositionError(f"variant {spec.name!r}: no experts are selected to merge.")
    text_delta = "text" if decoupled else "shared"
    k = len(pool)
    weights = {slots.slot((e.name, text_delta)): coefficients.lam(e.name, k) for e in pool.values()}
    if decoupled:
        modality_routes = {m: {slots.slot((e.name, "modality")): coefficients.mu(m)} for m, e in pool.items()}
    else:
        modality_routes = {}

    from .methods import get_method

    linear = spec.kind == "damc" or get_method(spec.method).linear
    if linear:
        text = dict(weights)
        if not decoupled:
            modality_routes = {m: dict(weights) for m in pool}
        return ResolvedVariant(spec.name, {TEXT_ROUTE: text, **modality_routes}, pool)
    request = DenseRequest(spec.method, dict(spec.hyper), list(weights), list(weights.values()))
    dense_routes = (TEXT_ROUTE,) if decoupled else (TEXT_ROUTE, *pool)
    routes = {TEXT_ROUTE: {}, **modality_routes, **{m: {} for m in pool if not decoupled}}
    return ResolvedVariant(spec.name, routes, pool, dense=request, dense_routes=dense_routes)
