"""Which variants a request runs, over a per-request view of the shared model.

The engine resolves variants over *all* experts loaded in a ComposedModel. A user's
selection is per request, so each request runs on a shallow view of the shared model
whose ``experts`` mapping holds only the selected experts; weights, routed layers, slot
table, dense-result cache and lock stay shared. (An engine-level ``experts=`` argument
to ``compare``/``resolve`` would make this view unnecessary.)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

from composition.composer import ComposedModel
from composition.errors import CompositionError
from composition.variants import DAMC, EXPERT_PREFIX, NAIVE, VariantSpec

from .settings import StudioSettings


def model_view(cm: ComposedModel, selected: Iterable[str]) -> ComposedModel:
    """The engine's view of ``cm`` that composes only the ``selected`` experts.

    Same result as ``cm.subset(selected)``, but without waiting for the engine's lock,
    which a running generation holds until its last token: preparing a request or
    recomposing after a slider move must not wait for another user's generation. The
    expert mapping is copied in one step (atomic under the GIL), so an expert being added
    or removed at the same time is either wholly in the view or not; every compare
    still takes the lock itself.
    """
    names = list(selected)
    experts = dict(cm.experts)
    unknown = [n for n in names if n not in experts]
    if unknown:
        raise CompositionError(f"expert {unknown[0]!r} is not loaded; loaded experts: {sorted(experts)}.")
    view = copy.copy(cm)
    view.experts = {n: e for n, e in experts.items() if n in names}
    return view


@dataclass
class VariantPlan:
    """The variants to run, and those that cannot run with these inputs (name -> why)."""

    specs: list[VariantSpec] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]


def plan_variants(view: ComposedModel, settings: StudioSettings, present: set[str], *,
                  experts_without_input: bool = False) -> VariantPlan:
    """NaiveMC, DAMC, each selected expert with an input, then the chosen methods.

    A composition that cannot run (no shared experts for NaiveMC, an input without an
    expert) becomes a skipped entry with the engine's reason instead of failing the request.
    """
    plan = VariantPlan()
    coefficients = settings.coefficients(view.experts)
    candidates = [VariantSpec.parse(NAIVE), VariantSpec.parse(DAMC)]
    candidates += [VariantSpec.parse(m, settings.hyper(m)) for m in settings.methods]
    has = {"shared": any(e.training == "shared" for e in view.experts.values()),
           "decoupled": any(e.training == "decoupled" for e in view.experts.values())}
    for spec in candidates:
        if spec.kind in ("naive", "damc") and not has["shared" if spec.kind == "naive" else "decoupled"]:
            continue  # nothing of that training kind is selected: no card, not an error
        try:
            _check_resolves(view, spec, coefficients, present)
        except CompositionError as exc:
            plan.skipped[spec.name] = str(exc)
            continue
        plan.specs.append(spec)
    order = [n for n in view.default_variants(present) if n.startswith(EXPERT_PREFIX)]
    if experts_without_input:
        order += [EXPERT_PREFIX + n for n in view.experts if EXPERT_PREFIX + n not in order]
    methods = [s for s in plan.specs if s.kind == "method"]
    plan.specs = [s for s in plan.specs if s.kind != "method"] + [VariantSpec.parse(n) for n in order] + methods
    if not plan.specs:
        why = next(iter(plan.skipped.values()), "")
        raise CompositionError(why or "no variant can answer: select at least one expert (Experts tab) "
                               "and give inputs their experts can read.")
    return plan


def _check_resolves(view: ComposedModel, spec: VariantSpec, coefficients, present: set[str]) -> None:
    """Resolve without computing dense merges (cheap): raises the engine's CompositionError."""
    from composition.variants import SlotTable, resolve_variant

    experts = list(view.experts.values())
    rv = resolve_variant(spec, experts, SlotTable(), coefficients, present)
    missing = sorted(present - rv.modalities)
    if missing:
        raise CompositionError(f"variant {spec.name!r} has no expert for the {', '.join(missing)} input(s); "
                               f"select an expert for {missing[0]} or remove that input.")
