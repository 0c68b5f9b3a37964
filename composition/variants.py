"""Variants: which deltas each token route uses, with which coefficient (DESIGN.md §1).

A variant resolves to one sparse coefficient vector over delta slots per *route*: its text
tokens (generated tokens are text too) and its tokens of each modality block.

- ``expert:<name>``: its own deltas (shared D, or text T / modality M), only its own inputs.
- ``base``: the base LLM alone, no delta on any token and no input (the reference for what a
  composition keeps of the base).
- ``NaiveMC`` (shared experts): every token uses ``Σ_i λ_i D_i``; at the default λ_i = 1/K that is
  the exact mean of the deltas, the paper's NaiveMC. ``LambdaRoutes.TEXT_ONLY`` (the variant
  ``NaiveMC-text-lambda``) weights only its text tokens by λ, its modality tokens keep the mean;
  ``LambdaRoutes.MODALITY_ONLY`` (``NaiveMC-modality-lambda``) the other way round.
- ``DAMC`` (decoupled experts): text uses ``Σ_i λ_i T_i``; tokens of modality m_i use ``μ_i M_i``.

λ left unset is auto: ``lambda_scale``·(1/K) over the K experts taking part (scale 1: the paper's
1/K). The scale moves the shared composition and DAMC together, so "shared at s" and "DAMC at s"
run side by side in one request; a λ the user set is never scaled.
- a registry method on the text deltas (decoupled experts; modality deltas kept as in
  DAMC), or on the shared deltas for every token when only shared experts take part.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

from .errors import CompositionError
from .expert import Expert
from .schedules import ModuleLayout, Schedule, parse_coefficient

NAIVE = "NaiveMC"
DAMC = "DAMC"
BASE = "base"
EXPERT_PREFIX = "expert:"
TEXT_ROUTE = "text"
NAIVE_TEXT_LAMBDA = "NaiveMC-text-lambda"  # NaiveMC with λ on its text tokens only (LambdaRoutes.TEXT_ONLY)
NAIVE_MODALITY_LAMBDA = "NaiveMC-modality-lambda"  # NaiveMC with λ on its modality tokens only (MODALITY_ONLY)
COEF_RANGE = (-4.0, 4.0)
SCALE_RANGE = (0.0, 4.0)  # lambda_scale: auto λ = scale/K; 4 keeps every auto λ inside COEF_RANGE


def route_names() -> tuple[str, ...]:
    from modalities import MODALITY_NAMES

    return (TEXT_ROUTE, *MODALITY_NAMES)


@dataclass(frozen=True)
class Coefficients:
    """The app's sliders. λ per expert name (text merge), μ per modality (modality deltas).

    Missing entries take the paper's defaults: λ = 1/K over the experts taking part, μ = 1.
    ``lambda_scale`` s scales those defaults: an auto λ is s·(1/K) per expert (s = 1, the
    paper's; a λ given in ``lambdas`` is the user's and is never scaled). It applies to every
    composition of the request alike, the shared one (NaiveMC) and DAMC.

    A λ or μ may also be a schedule over layers and modules (``composition.schedules``: an
    anchor list, or ``{filter, value}`` entries); given as YAML/JSON data it is parsed here.
    """

    lambdas: Mapping[str, "float | Schedule"] = field(default_factory=dict)
    mus: Mapping[str, "float | Schedule"] = field(default_factory=dict)
    lambda_scale: float = 1.0

    def __post_init__(self) -> None:
        scale = self.lambda_scale
        if (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
                or not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]):
            raise CompositionError(f"lambda_scale is {scale!r}; expected a finite number in [{SCALE_RANGE[0]:g}, "
                                   f"{SCALE_RANGE[1]:g}] (auto λ = scale·1/K; 1 is the paper's 1/K).")
        for attr, label in (("lambdas", "λ"), ("mus", "μ")):
            mapping = getattr(self, attr)
            object.__setattr__(self, attr, {key: parse_coefficient(value, f"{label} for {key!r}", COEF_RANGE)
                                            for key, value in mapping.items()})
        known = set(route_names()) - {TEXT_ROUTE}
        unknown = sorted(set(self.mus) - known)
        if unknown:
            raise CompositionError(f"μ given for unknown modality {unknown[0]!r}; expected one of {sorted(known)}.")

    def lam(self, expert: str, k: int) -> "float | Schedule":
        """λ of ``expert`` in a merge of ``k`` experts: the user's value (a number or a schedule), else lambda_scale/k."""
        value = self.lambdas.get(expert)
        return self.auto_lam(k) if value is None else value

    def auto_lam(self, k: int) -> float:
        """The auto λ in a merge of ``k`` experts (also where a schedule's filters leave a module out)."""
        return float(self.lambda_scale / k)

    def scales(self, experts) -> bool:
        """Whether lambda_scale changes any of these experts' λ (some is auto and the scale is not 1)."""
        return self.lambda_scale != 1.0 and any(name not in self.lambdas for name in experts)

    def mu(self, modality: str) -> "float | Schedule":
        return self.mus.get(modality, 1.0)

    @property
    def scheduled(self) -> bool:
        """Whether some λ or μ varies by layer or module."""
        return any(isinstance(v, Schedule) for v in (*self.lambdas.values(), *self.mus.values()))


class VariantKind(str, Enum):
    """What a variant is; the engine and every layer above branch on this, never on its name."""

    EXPERT = "expert"  # one expert alone
    BASE = "base"  # the base LLM alone: no delta on any token (what compositions are measured against)
    NAIVE = "naive"  # NaiveMC
    DAMC = "damc"  # DAMC
    METHOD = "method"  # a registry merge method

    @property
    def composes(self) -> bool:
        """True for the variants that merge several experts (everything but a single expert and the base)."""
        return self not in (VariantKind.EXPERT, VariantKind.BASE)


class LambdaRoutes(str, Enum):
    """Which token routes of the shared composition (NaiveMC) λ weights.

    DAMC's λ weights only its text tokens by construction (its modality tokens use μ_i·M_i);
    the shared composition has one delta per expert for every token, so λ reaches the
    modality tokens too. ``TEXT_ONLY`` and ``MODALITY_ONLY`` separate the two: one kind of token
    uses Σ λ_i·D_i, the other keeps the paper's mean Σ D_i/K, which measures through which
    tokens the shared merge loses at a large λ (docs/interference.md).
    """

    EVERY_TOKEN = "every-token"  # the shared composition as defined: one Σ λ_i D_i for every token
    TEXT_ONLY = "text-only"  # λ on text tokens; modality tokens keep Σ D_i / K
    MODALITY_ONLY = "modality-only"  # λ on modality tokens; text tokens keep Σ D_i / K

    @property
    def variant_name(self) -> str:
        return {LambdaRoutes.EVERY_TOKEN: NAIVE, LambdaRoutes.TEXT_ONLY: NAIVE_TEXT_LAMBDA,
                LambdaRoutes.MODALITY_ONLY: NAIVE_MODALITY_LAMBDA}[self]


@dataclass(frozen=True)
class VariantSpec:
    """What a user asks for by name: ``NaiveMC``, ``DAMC``, ``expert:<name>`` or a method name.

    ``lambda_routes`` (NaiveMC only) is set by ``VariantSpec.naive``, never read from a name.
    """

    name: str
    kind: VariantKind
    expert: str | None = None
    method: str | None = None
    hyper: tuple[tuple[str, float], ...] = ()
    space: str = "dense"  # a method's: "dense" (the reference) or "core" (low-rank, routed online); name suffix @core
    lambda_routes: LambdaRoutes = LambdaRoutes.EVERY_TOKEN

    def __post_init__(self) -> None:
        if not isinstance(self.lambda_routes, LambdaRoutes):
            raise CompositionError(f"lambda_routes is {self.lambda_routes!r}; expected one of "
                                   f"{[r.value for r in LambdaRoutes]} (a LambdaRoutes).")
        if self.lambda_routes is not LambdaRoutes.EVERY_TOKEN and self.kind is not VariantKind.NAIVE:
            raise CompositionError(f"variant {self.name!r}: lambda_routes {self.lambda_routes.value!r} applies to {NAIVE} "
                                   f"only (DAMC's λ weights only text tokens already); use VariantSpec.naive(...).")

    @staticmethod
    def naive(lambda_routes: LambdaRoutes = LambdaRoutes.EVERY_TOKEN) -> "VariantSpec":
        """The shared composition (``NaiveMC``; ``NaiveMC-text-lambda`` / ``NaiveMC-modality-lambda`` with λ on
        one kind of token only)."""
        name = lambda_routes.variant_name if isinstance(lambda_routes, LambdaRoutes) else NAIVE
        return VariantSpec(name, VariantKind.NAIVE, lambda_routes=lambda_routes)  # anything else is refused there

    @staticmethod
    def parse(name: str, hyper: Mapping[str, float] | None = None) -> "VariantSpec":
        from .methods import get_method, list_methods
        from .methods.registry import SPACE_SEPARATOR, RenamedParameterWarning, split_space

        name = name.strip()
        if name == NAIVE:
            return VariantSpec(NAIVE, VariantKind.NAIVE)
        if name == NAIVE_TEXT_LAMBDA:
            return VariantSpec.naive(LambdaRoutes.TEXT_ONLY)
        if name == NAIVE_MODALITY_LAMBDA:
            return VariantSpec.naive(LambdaRoutes.MODALITY_ONLY)
        if name == DAMC:
            return VariantSpec(DAMC, VariantKind.DAMC)
        if name == BASE:
            return VariantSpec(BASE, VariantKind.BASE)
        if name.startswith(EXPERT_PREFIX) and len(name) > len(EXPERT_PREFIX):
            return VariantSpec(name, VariantKind.EXPERT, expert=name[len(EXPERT_PREFIX):])
        if name.partition(SPACE_SEPARATOR)[0] in {m.name for m in list_methods()}:
            method_name, space = split_space(name)
            values, notes = get_method(method_name).resolve_hyper(dict(hyper or {}))
            for note in notes:  # an old hyper-parameter name (drop_rate): it works, and the user is told the new one
                warnings.warn(note, RenamedParameterWarning, stacklevel=2)
            return VariantSpec(name, VariantKind.METHOD, method=method_name, hyper=tuple(sorted(values.items())), space=space)
        methods = ", ".join(m.name for m in list_methods())
        raise CompositionError(f"unknown variant {name!r}; expected {NAIVE} (or {NAIVE_TEXT_LAMBDA}, {NAIVE_MODALITY_LAMBDA}), "
                               f"{DAMC}, expert:<name>, {BASE} "
                               f"or a merge method ({methods}; "
                               f"<method>{SPACE_SEPARATOR}core runs it in the experts' low-rank core space).")

    @staticmethod
    def of_expert(name: str) -> "VariantSpec":
        """The single-expert variant of the expert called ``name``."""
        return VariantSpec(EXPERT_PREFIX + name, VariantKind.EXPERT, expert=name)


@dataclass
class DenseRequest:
    """A non-linear merge the engine must compute per layer into a dense slot."""

    method: str
    hyper: dict[str, float]
    slots: list[int]  # the input delta slots, one per expert
    weights: list[float]
    seed: int = 0
    space: str = "dense"  # "core": merged in the experts' core space, the result a low-rank slot
    # A schedule: per expert, its weight at every routed module (ModuleLayout order); None: ``weights`` everywhere.
    module_weights: tuple[tuple[float, ...], ...] | None = None

    def weights_at(self, position: int) -> list[float]:
        """The per-expert weights of the merge at the routed module with this ``position``."""
        if self.module_weights is None:
            return list(self.weights)
        return [w[position] for w in self.module_weights]


@dataclass
class ResolvedVariant:
    """A variant as the engine runs it, and the coefficients it applies (what the user is shown).

    ``lambdas`` maps each expert taking part to the weight of its text-side delta (its
    shared delta for NaiveMC and shared-only merges), ``mus`` each modality to the scale
    of its modality delta; both are the values applied, after the paper's defaults.
    ``modality_lambdas``: NaiveMC with λ on one kind of token only, the weight of each shared
    delta on the modality tokens (``lambdas`` holds the text tokens'). ``lambda_scale``: the
    scale its auto λ took. A scheduled λ or μ is shown as its ``Schedule``; ``module_routes``
    then holds its coefficient at every routed module (route -> slot -> one value per module,
    ``ModuleLayout`` order), and ``routes`` the mean over modules, for displays only.
    """

    spec: VariantSpec
    routes: dict[str, dict[int, float]]  # route -> {slot: coefficient}
    block_experts: dict[str, Expert]  # modality -> expert whose projector makes its blocks
    lambdas: dict[str, float] = field(default_factory=dict)
    mus: dict[str, float] = field(default_factory=dict)
    dense: DenseRequest | None = None  # filled into routes[...] under a slot the engine allocates
    dense_routes: tuple[str, ...] = ()
    modality_lambdas: dict[str, float] = field(default_factory=dict)
    lambda_scale: float = 1.0
    module_routes: dict[str, dict[int, tuple[float, ...]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> VariantKind:
        return self.spec.kind

    @property
    def modalities(self) -> set[str]:
        return set(self.block_experts)

    @property
    def experts(self) -> list[str]:
        """The experts taking part, in prompt (modality) order."""
        return [e.name for e in in_prompt_order(self.block_experts.values())]

    def route_at(self, route: str, position: int) -> dict[int, float]:
        """``{slot: coefficient}`` of ``route`` at the routed module with this ``position`` (schedules applied)."""
        coefs = dict(self.routes.get(route, {}))
        for slot, values in self.module_routes.get(route, {}).items():
            coefs[slot] = values[position]
        return coefs

    def coefficients_json(self) -> dict:
        """``{"lambdas": {expert: λ}, "mus": {modality: μ}}`` (+ ``"hyper"`` for merge methods): the values applied,
        a schedule in its YAML form (an anchor list, or ``{filter, value}`` entries).

        Only when they apply: ``"lambda_scale"`` (auto λ = scale/K with a scale other than 1) and
        ``"modality_lambdas"`` (NaiveMC with λ on one kind of token only: the weights on modality tokens).
        """
        data: dict = {"lambdas": {n: _rounded(v) for n, v in self.lambdas.items()},
                      "mus": {m: _rounded(v) for m, v in self.mus.items()}}
        if self.lambda_scale != 1.0:
            data["lambda_scale"] = round(self.lambda_scale, 6)
        if self.modality_lambdas:
            data["modality_lambdas"] = {n: _rounded(v) for n, v in self.modality_lambdas.items()}
        if self.kind is VariantKind.METHOD:
            data["hyper"] = dict(self.spec.hyper)
        return data


def _rounded(value):
    return value.plain() if isinstance(value, Schedule) else round(value, 6)


Coef = "float | tuple[float, ...]"  # one value, or one per routed module (ModuleLayout order)


def _over_modules(value: "float | Schedule", fallback: float, layout: ModuleLayout | None, what: str):
    """A coefficient as the routes hold it: the number, or a schedule's value at every routed module."""
    if not isinstance(value, Schedule):
        return float(value)
    if layout is None:
        raise CompositionError(f"{what} varies by layer, and this model has no layout of its routed modules; "
                               "plan through ComposedModel.plan (it knows the base's layers).")
    return layout.values(value, fallback, what)


def _put(routes: dict, module_routes: dict, route: str, slot: int, coef) -> None:
    """Write one route coefficient; a per-module one goes to ``module_routes``, its mean to ``routes`` (for displays)."""
    if isinstance(coef, tuple):
        routes.setdefault(route, {})[slot] = sum(coef) / len(coef)
        module_routes.setdefault(route, {})[slot] = coef
    else:
        routes.setdefault(route, {})[slot] = coef


def _linear_over_modules(method, weights: dict[int, object]) -> dict[int, object]:
    """A linear method's coefficients ``c = linear_weights(w)``, module by module where some weight is scheduled."""
    values = list(weights.values())
    if not any(isinstance(w, tuple) for w in values):
        return dict(zip(weights, method.linear_weights(values)))
    n = len(next(w for w in values if isinstance(w, tuple)))
    columns = [method.linear_weights([w[p] if isinstance(w, tuple) else w for w in values]) for p in range(n)]
    return {slot: tuple(col[i] for col in columns) for i, slot in enumerate(weights)}


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


def in_prompt_order(experts) -> list[Expert]:
    order = {m: i for i, m in enumerate(route_names())}
    return sorted(experts, key=lambda e: order.get(e.modality, len(order)))


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
    order = {m: i for i, m in enumerate(route_names())}  # prompt order, whatever order the experts were loaded in
    return dict(sorted(by_modality.items(), key=lambda item: order.get(item[0], len(order))))


def participants(experts: list[Expert], kind: str, input_modalities: set[str], merge_all: bool = False) -> dict[str, Expert]:
    """The experts of one training kind that a composition merges.

    The studio's rule: those whose modality has an input (all of them for a text-only
    question). ``merge_all``: every selected expert, whatever inputs are given, as the
    original's merged checkpoint does (its merged layer always adds every expert's text delta).
    """
    pool = _one_per_modality(experts, kind)
    if input_modalities and not merge_all:
        pool = {m: e for m, e in pool.items() if m in input_modalities}
    return pool


def text_merge_pool(experts: list[Expert], input_modalities: set[str], merge_all: bool = False) -> tuple[dict[str, Expert], bool]:
    """The experts whose text-side deltas DAMC and the merge methods combine, and whether they are decoupled.

    Decoupled experts when any takes part, else shared ones (their one delta serves every
    token). This is the one place that rule lives; the λ sliders ask it too.
    """
    pool = participants(experts, "decoupled", input_modalities, merge_all)
    if pool:
        return pool, True
    return participants(experts, "shared", input_modalities, merge_all), False


def applied_lambdas(experts: list[Expert], input_modalities: set[str], coefficients: "Coefficients",
                    merge_all: bool = False) -> dict[str, float]:
    """λ per expert that a text merge with these inputs applies (the user's value, else 1/K)."""
    pool, _ = text_merge_pool(experts, input_modalities, merge_all)
    return {e.name: coefficients.lam(e.name, len(pool)) for e in pool.values()}


def _check_covers(spec: VariantSpec, rv_modalities: set[str], input_modalities: set[str]) -> None:
    missing = sorted(input_modalities - rv_modalities)
    if missing:
        raise CompositionError(f"variant {spec.name!r} has no expert for the {', '.join(missing)} input(s); "
                               f"select an expert for {missing[0]} or remove that input.")


def resolve_variant(spec: VariantSpec, experts: list[Expert], slots: SlotTable, coefficients: Coefficients,
                    input_modalities: set[str], merge_all: bool = False,
                    layout: ModuleLayout | None = None) -> ResolvedVariant:
    """Turn a spec into route coefficients over ``slots`` (allocating slots as needed).

    A composition must cover every input given (an input none of its experts reads is an
    error that names the modality); a single expert reads only its own modality's inputs.
    ``merge_all``: compositions merge every selected expert, not only those with an input
    (see ``participants``). ``layout``: the base's routed modules, where a scheduled λ or μ
    takes its value per module.
    """
    by_name = {e.name: e for e in experts}
    if spec.kind is VariantKind.BASE:  # reads no input: its prompt has only the text
        return ResolvedVariant(spec, {TEXT_ROUTE: {}}, {})
    if spec.kind is VariantKind.EXPERT:
        expert = by_name.get(spec.expert)
        if expert is None:
            raise CompositionError(f"variant {spec.name!r}: no loaded expert is named {spec.expert!r}; loaded: {sorted(by_name)}.")
        if expert.training == "shared":
            d = slots.slot((expert.name, "shared"))
            routes = {TEXT_ROUTE: {d: 1.0}, expert.modality: {d: 1.0}}
            return ResolvedVariant(spec, routes, {expert.modality: expert}, {expert.name: 1.0})
        routes = {TEXT_ROUTE: {slots.slot((expert.name, "text")): 1.0},
                  expert.modality: {slots.slot((expert.name, "modality")): 1.0}}
        return ResolvedVariant(spec, routes, {expert.modality: expert}, {expert.name: 1.0}, {expert.modality: 1.0})

    routes: dict[str, dict[int, float]] = {TEXT_ROUTE: {}}
    module_routes: dict[str, dict[int, tuple[float, ...]]] = {}
    if spec.kind is VariantKind.NAIVE:
        pool = participants(experts, "shared", input_modalities, merge_all)
        if not pool:
            raise CompositionError(f"{NAIVE} merges experts trained with shared deltas, and none is selected"
                                   f"{' for the given inputs' if input_modalities else ''}. Select shared experts or use {DAMC}.")
        _check_covers(spec, set(pool), input_modalities)
        k = len(pool)
        given = {e.name: coefficients.lam(e.name, k) for e in pool.values()}
        lambdas = {n: _over_modules(v, coefficients.auto_lam(k), layout, f"λ for {n!r}") for n, v in given.items()}
        scale = coefficients.lambda_scale if coefficients.scales(lambdas) else 1.0
        mean = {e.name: 1.0 / k for e in pool.values()}  # the paper's, kept by the route λ does not reach
        pick = {LambdaRoutes.EVERY_TOKEN: lambda d: (d, d), LambdaRoutes.TEXT_ONLY: lambda d: (d, mean),
                LambdaRoutes.MODALITY_ONLY: lambda d: (mean, d)}[spec.lambda_routes]
        text, modality = pick(lambdas)
        for n, w in text.items():
            _put(routes, module_routes, TEXT_ROUTE, slots.slot((n, "shared")), w)
        for m in pool:
            for e in pool.values():
                _put(routes, module_routes, m, slots.slot((e.name, "shared")), modality[e.name])
        shown_text, shown_modality = pick(given)
        split = spec.lambda_routes is not LambdaRoutes.EVERY_TOKEN
        return ResolvedVariant(spec, routes, pool, dict(shown_text), modality_lambdas=dict(shown_modality) if split else {},
                               lambda_scale=scale, module_routes=module_routes)

    # DAMC and the registry methods: decoupled experts when there are any, else shared ones.
    pool, decoupled = text_merge_pool(experts, input_modalities, merge_all)
    if not decoupled and spec.kind is VariantKind.DAMC:
        raise CompositionError(f"{DAMC} needs experts trained with decoupled (text + modality) deltas, and none is selected"
                               f"{' for the given inputs' if input_modalities else ''}. Select decoupled experts or use {NAIVE}.")
    if not pool:
        raise CompositionError(f"variant {spec.name!r}: no experts are selected to merge.")
    _check_covers(spec, set(pool), input_modalities)
    text_delta = "text" if decoupled else "shared"
    k = len(pool)
    given = {e.name: coefficients.lam(e.name, k) for e in pool.values()}
    lambdas = {n: _over_modules(v, coefficients.auto_lam(k), layout, f"λ for {n!r}") for n, v in given.items()}
    scale = coefficients.lambda_scale if coefficients.scales(lambdas) else 1.0
    weights = {slots.slot((e.name, text_delta)): lambdas[e.name] for e in pool.values()}
    mus = {m: coefficients.mu(m) for m in pool} if decoupled else {}
    for m, e in pool.items() if decoupled else ():
        _put(routes, module_routes, m, slots.slot((e.name, "modality")), _over_modules(mus[m], 1.0, layout, f"μ for {m!r}"))

    from .methods import get_method

    method = None if spec.kind is VariantKind.DAMC else get_method(spec.method)
    if method is not None and method.linear:  # exact in either space: the weights route the low-rank slots directly
        weights = _linear_over_modules(method, weights)
        if not any(isinstance(v, Schedule) for v in given.values()):
            given = dict(zip(given, weights.values()))  # the coefficients applied (normalized, for weight_average)
    if method is None or method.linear:
        for route in (TEXT_ROUTE, *(() if decoupled else pool)):
            for slot, w in weights.items():
                _put(routes, module_routes, route, slot, w)
        return ResolvedVariant(spec, routes, pool, given, mus, lambda_scale=scale, module_routes=module_routes)
    scheduled = any(isinstance(w, tuple) for w in weights.values())
    n_modules = len(layout.modules) if scheduled else 0
    module_weights = tuple(w if isinstance(w, tuple) else (w,) * n_modules for w in weights.values()) if scheduled else None
    flat = [sum(w) / len(w) if isinstance(w, tuple) else w for w in weights.values()]
    request = DenseRequest(spec.method, dict(spec.hyper), list(weights), flat, space=spec.space, module_weights=module_weights)
    dense_routes = (TEXT_ROUTE,) if decoupled else (TEXT_ROUTE, *pool)
    routes.update({m: {} for m in pool if not decoupled})
    return ResolvedVariant(spec, routes, pool, given, mus, dense=request, dense_routes=dense_routes, lambda_scale=scale,
                           module_routes=module_routes)
