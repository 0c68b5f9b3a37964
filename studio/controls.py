"""The mapping between the UI's flat list of control values and StudioSettings.

The app pre-builds MAX_LAMBDA_SLOTS λ sliders, one μ slider per modality and one slider
per (method, hyper-parameter) of the registry; these functions turn their values into
settings and back, so the app stays a thin layer of components.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from composition.errors import CompositionError
from composition.methods import list_methods
from modalities import MODALITY_NAMES

from .settings import MAX_LAMBDA_SLOTS, StudioSettings, lambda_slots, paper_lambdas, text_merge_experts


def param_keys() -> list[tuple[str, str]]:
    """(method, parameter) of every registry hyper-parameter, in registry order."""
    return [(m.name, p.name) for m in list_methods() for p in m.params]


@dataclass
class SliderView:
    """What one pre-built slider should show."""

    visible: bool
    label: str
    value: float


def lambda_views(experts: Mapping, selected: Sequence[str], values: Mapping[str, float] | None = None) -> list[SliderView]:
    """λ sliders for the selected text-merge experts; a missing value takes 1/K."""
    slots = lambda_slots(experts, selected)
    names = [n for n in slots if n]
    default = paper_lambdas(names)
    values = values or {}
    return [SliderView(True, _lambda_label(n, experts[n].modality), float(values.get(n, default[n]))) if n
            else SliderView(False, "λ (unused)", 0.0) for n in slots]


def _lambda_label(name: str, modality: str) -> str:
    return f"λ {name} (text)" if name == modality else f"λ {name} ({modality}, text)"


def mu_views(experts: Mapping, selected: Sequence[str], values: Mapping[str, float] | None = None) -> list[SliderView]:
    """μ sliders for the modalities of the selected decoupled experts (μ applies to modality deltas)."""
    have = {experts[n].modality for n in selected if n in experts and experts[n].training == "decoupled"}
    values = values or {}
    return [SliderView(m in have, f"μ {m} (modality)", float(values.get(m, 1.0))) for m in MODALITY_NAMES]


def settings_from_controls(experts: Mapping, selected: Sequence[str], lam_values: Sequence[float],
                           mu_values: Sequence[float], methods: Sequence[str], param_values: Sequence[float],
                           max_new_tokens: float, temperature: float, top_p: float, seed: float = 0) -> StudioSettings:
    if len(lam_values) != MAX_LAMBDA_SLOTS or len(mu_values) != len(MODALITY_NAMES) or len(param_values) != len(param_keys()):
        raise CompositionError("the app sent the wrong number of slider values; reload the page.")
    selected = [n for n in (selected or []) if n in experts]
    names = [n for n in lambda_slots(experts, selected) if n]
    lambdas = {n: float(v) for n, v in zip(names, lam_values)}
    mu_have = {experts[n].modality for n in selected if experts[n].training == "decoupled"}
    mus = {m: float(v) for m, v in zip(MODALITY_NAMES, mu_values) if m in mu_have}
    params: dict[str, dict[str, float]] = {}
    for (method, name), value in zip(param_keys(), param_values):
        if method in (methods or []):
            params.setdefault(method, {})[name] = value
    return StudioSettings(selected=list(selected), lambdas=lambdas, mus=mus, methods=list(methods or []),
                          method_params=params, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                          top_p=float(top_p), seed=int(seed or 0))


def controls_from_settings(experts: Mapping, settings: StudioSettings) -> dict:
    """Everything the UI needs to show ``settings``: selection, slider views, methods, params, generation."""
    values = []
    for method, name in param_keys():
        values.append(settings.hyper(method)[name])
    return {"selected": list(settings.selected), "lambdas": lambda_views(experts, settings.selected, settings.lambdas),
            "mus": mu_views(experts, settings.selected, settings.mus), "methods": list(settings.methods),
            "params": values, "max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
            "top_p": settings.top_p}


def default_lambda_names(experts: Mapping, selected: Sequence[str]) -> list[str]:
    return text_merge_experts(experts, selected)
