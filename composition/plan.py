"""The planning step: which variants run for a request, who takes part, with which coefficients.

The engine decides this once; the app, the CLI, the MCUB runner and the benchmark ask it
(DESIGN.md §1, "Which experts a composition merges"). A plan is cheap: it allocates no
dense merge results (those are computed when the plan runs), so the app can plan on every
slider move and show the coefficients that a Compare would apply.

    plan = cm.plan(present={"image", "audio"}, selection=["image", "audio", "video"])
    [(v.name, v.kind, v.experts, v.coefficients_json()) for v in plan.variants]
    plan.skipped            # {"NaiveMC": "NaiveMC merges experts trained with shared deltas, ..."}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .errors import CompositionError
from .expert import Expert
from .schedules import ModuleLayout, describe_plain
from .variants import (DAMC, NAIVE, Coefficients, ResolvedVariant, SlotTable, VariantKind, VariantSpec, resolve_variant,
                       route_names)


@dataclass
class Plan:
    """The variants a request runs (resolved, in card order), and those that cannot run here (name -> why)."""

    variants: list[ResolvedVariant] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    skipped_kinds: dict[str, VariantKind] = field(default_factory=dict)
    present: frozenset[str] = frozenset()
    merge_all_experts: bool = False  # compositions merge every selected expert, not only those with an input

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def specs(self) -> list[VariantSpec]:
        return [v.spec for v in self.variants]

    def variant(self, name: str) -> ResolvedVariant | None:
        return next((v for v in self.variants if v.name == name), None)

    def only(self, indices: Sequence[int]) -> "Plan":
        """The same plan with only the variants at ``indices`` (run one at a time, for instance)."""
        return Plan([self.variants[i] for i in indices], {}, {}, self.present, self.merge_all_experts)


def describe_coefficients(coefficients: Mapping) -> str:
    """``λ image 0.50, audio 0.50 · μ image 1.00, audio 1.00 · density 0.3``: applied values in words
    (a ``ResolvedVariant.coefficients_json()``), as cards, captions and the CLI show them; a λ scale
    other than 1 adds ``auto λ = 2·(1/K)`` after the λ."""
    parts = [f"{symbol} " + ", ".join(f"{k} {describe_plain(v)}" for k, v in coefficients[key].items())
             for key, symbol in (("lambdas", "λ"), ("modality_lambdas", "λ on modality tokens"), ("mus", "μ"))
             if coefficients.get(key)]
    if coefficients.get("lambda_scale") is not None:
        parts.insert(1, f"auto λ = {coefficients['lambda_scale']:g}·(1/K)")
    if coefficients.get("hyper"):
        parts.append(", ".join(f"{k} {v:g}" for k, v in coefficients["hyper"].items()))
    return " · ".join(parts)


def default_specs(experts: Sequence[Expert], present: set[str], methods: Iterable[str] = (),
                  hyper: Mapping[str, Mapping[str, float]] | None = None, *,
                  experts_without_input: bool = False) -> list[VariantSpec]:
    """NaiveMC and DAMC where experts of their training kind are selected, every expert with an
    input (all experts with ``experts_without_input``), then the chosen merge methods."""
    hyper = hyper or {}
    trainings = {e.training for e in experts}
    specs = []
    if "shared" in trainings:
        specs.append(VariantSpec.parse(NAIVE))
    if "decoupled" in trainings:
        specs.append(VariantSpec.parse(DAMC))
    order = {m: i for i, m in enumerate(route_names())}
    with_input = sorted((e for e in experts if e.modality in present), key=lambda e: (order[e.modality], e.training == "shared"))
    if experts_without_input:
        with_input += [e for e in experts if e not in with_input]
    specs += [VariantSpec.of_expert(e.name) for e in with_input]
    specs += [VariantSpec.parse(m, hyper.get(m)) for m in methods]
    return specs


def make_plan(experts: Sequence[Expert], slots: SlotTable, present: Iterable[str],
              variants: Sequence[str | VariantSpec] | None = None, coefficients: Coefficients | None = None, *,
              methods: Iterable[str] = (), hyper: Mapping[str, Mapping[str, float]] | None = None,
              experts_without_input: bool = False, merge_all_experts: bool = False,
              layout: ModuleLayout | None = None) -> Plan:
    """Resolve the variants of one request over ``experts`` (the user's selection).

    Args:
        experts: the experts that may take part.
        slots: the model's slot table (expert slots exist already; nothing dense is allocated).
        present: modalities that have an input.
        variants: names or specs asked for explicitly: any that cannot run is an error.
            None = the defaults (see ``default_specs``): those that cannot run with these
            inputs are ``skipped`` with the reason, and it is an error only if none can run.
        coefficients: the user's λ and μ (missing values take the paper's defaults).
        methods, hyper: merge methods to add to the defaults, with their hyper-parameters.
        experts_without_input: the defaults also run experts that got no input.
        merge_all_experts: compositions merge every selected expert whatever inputs are given
            (the original's merged checkpoint), not only the experts with an input (the studio's rule).
        layout: the base's routed modules (``ComposedModel.layout``), where a scheduled λ or μ takes
            its value per module.
    """
    present = frozenset(present)
    coefficients = coefficients or Coefficients()
    experts = list(experts)
    plan = Plan(present=present, merge_all_experts=merge_all_experts)
    if variants is not None:
        for v in variants:
            spec = v if isinstance(v, VariantSpec) else VariantSpec.parse(v)
            plan.variants.append(resolve_variant(spec, experts, slots, coefficients, set(present), merge_all_experts, layout))
        if not plan.variants:
            raise CompositionError("no variant was named; name at least one (NaiveMC, DAMC, expert:<name> or a method).")
        return plan
    for spec in default_specs(experts, set(present), methods, hyper, experts_without_input=experts_without_input):
        try:
            plan.variants.append(resolve_variant(spec, experts, slots, coefficients, set(present), merge_all_experts, layout))
        except CompositionError as exc:
            if spec.kind is VariantKind.EXPERT:
                raise
            plan.skipped[spec.name] = str(exc)
            plan.skipped_kinds[spec.name] = spec.kind
    if not plan.variants:
        why = next(iter(plan.skipped.values()), "")
        raise CompositionError(why or "no variant can answer: select at least one expert (or load experts) "
                               "and give inputs their experts can read.")
    return plan
