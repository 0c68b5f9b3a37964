"""The UI's controls by name, and the mapping between their values and StudioSettings.

The app declares its components once, under the names below, and passes them to every
event by name (gradio's ``inputs_kwargs``); handlers receive a ``{name: value}`` mapping.
The app pre-builds MAX_LAMBDA_SLOTS λ sliders, one μ slider per registered modality and
one slider per (method, hyper-parameter) of the registry, so adding a modality or a
method adds controls here without a signature to edit anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from composition.errors import CompositionError
from composition.methods import list_methods
from composition.methods.registry import GROUPS
from composition.variants import Coefficients, applied_lambdas
from modalities import MODALITY_NAMES

from .settings import MAX_LAMBDA_SLOTS, StudioSettings, lambda_slots, selected_experts, untouched_lambdas

SELECTED = "selected"
GENERATION = ("max_new_tokens", "temperature", "top_p")
QUESTION = "question"
NO_INPUT = "experts_without_input"


def lambda_name(i: int) -> str:
    return f"lambda_{i}"


def mu_name(modality: str) -> str:
    return f"mu_{modality}"


def media_name(modality: str) -> str:
    return f"media_{modality}"


def param_name(method: str, param: str) -> str:
    return f"param__{method}__{param}"


def methods_name(group: str) -> str:
    return f"methods_{group}"


def method_groups() -> dict[str, list[tuple[str, str]]]:
    """The method picker: group -> [(label, variant name)] in registry order.

    A non-linear method that runs in both spaces gets two columns, dense (the reference) and
    ``@core`` (merged in the experts' low-rank core space: a different operation for
    element-wise methods); a linear one only its dense name (core space is exactly the same).
    """
    groups: dict[str, list[tuple[str, str]]] = {g: [] for g in GROUPS}
    for m in list_methods():
        if "dense" in m.spaces:
            groups[m.group].append((m.label, m.name))
        if "core" in m.spaces and not m.linear:
            groups[m.group].append((f"{m.label} · core space" if "dense" in m.spaces else f"{m.label} (low-rank)",
                                    f"{m.name}@core" if "dense" in m.spaces else m.name))
    return groups


def method_names_all() -> list[str]:
    return [methods_name(g) for g in GROUPS]


def param_keys() -> list[tuple[str, str]]:
    """(method, parameter) of every registry hyper-parameter, in registry order."""
    return [(m.name, p.name) for m in list_methods() for p in m.params]


def lambda_names_all() -> list[str]:
    return [lambda_name(i) for i in range(MAX_LAMBDA_SLOTS)]


def mu_names_all() -> list[str]:
    return [mu_name(m) for m in MODALITY_NAMES]


def control_names() -> list[str]:
    """Every composition control, by name: what a settings value set must hold."""
    return [SELECTED, *lambda_names_all(), *mu_names_all(), *method_names_all(),
            *[param_name(m, p) for m, p in param_keys()], *GENERATION]


def media_names() -> list[str]:
    return [media_name(m) for m in MODALITY_NAMES]


def media_of(values: Mapping) -> dict[str, object]:
    """``{modality: value}`` of the media controls among ``values`` (missing ones are None)."""
    return {m: values.get(media_name(m)) for m in MODALITY_NAMES}


@dataclass
class SliderView:
    """What one pre-built slider should show."""

    visible: bool
    label: str
    value: float
    interactive: bool = True


def lambda_views(experts: Mapping, selected: Sequence[str], values: Mapping[str, float] | None = None,
                 present: Iterable[str] = ()) -> list[SliderView]:
    """λ sliders for the selected text-merge experts, showing the values the current inputs will use.

    The engine decides who takes part (``applied_lambdas``): with inputs, an expert without one
    is not merged, and its slider says so. Sliders at a paper default made for other inputs
    (``untouched_lambdas``) follow the default 1/K over the experts taking part.
    """
    slots = lambda_slots(experts, selected)
    names = [n for n in slots if n]
    values = dict(values or {})
    if untouched_lambdas(values, names):
        values = {}  # a paper default made for other inputs: the engine's default for these
    applied = applied_lambdas(selected_experts(experts, selected), set(present), Coefficients(
        {n: v for n, v in values.items() if n in names}))
    views = []
    for n in slots:
        if n is None:
            views.append(SliderView(False, "λ (unused)", 0.0))
        elif n in applied:
            views.append(SliderView(True, _lambda_label(n, experts[n].modality), float(applied[n])))
        else:
            modality = experts[n].modality
            # Not merged with these inputs. Untouched, it shows the same default as the others, so the
            # sliders stay "at the default" and follow the next input change; moved, it keeps its value.
            idle = values.get(n, 1 / len(applied) if applied else 1 / len(names))
            views.append(SliderView(True, f"{_lambda_label(n, modality)}: no {modality} input, not merged",
                                    float(idle), interactive=False))
    return views


def _lambda_label(name: str, modality: str) -> str:
    return f"λ {name} (text)" if name == modality else f"λ {name} ({modality}, text)"


def mu_views(experts: Mapping, selected: Sequence[str], values: Mapping[str, float] | None = None,
             present: Iterable[str] = ()) -> list[SliderView]:
    """μ sliders for the modalities of the selected decoupled experts (μ applies to modality deltas)."""
    have = {e.modality for e in selected_experts(experts, selected) if e.training == "decoupled"}
    present, values = set(present), values or {}
    views = []
    for m in MODALITY_NAMES:
        idle = bool(present) and m not in present
        label = f"μ {m} (modality)" + (f": no {m} input" if idle else "")
        views.append(SliderView(m in have, label, float(values.get(m, 1.0)), interactive=not idle))
    return views


def settings_from_values(experts: Mapping, values: Mapping[str, object]) -> StudioSettings:
    """The named control values -> validated settings (a value missing is a stale page)."""
    missing = [n for n in control_names() if n not in values]
    if missing:
        raise CompositionError(f"the page sent no value for {missing[0]!r}; reload the page.")
    selected = [n for n in (values[SELECTED] or []) if n in experts]
    names = [n for n in lambda_slots(experts, selected) if n]
    lambdas = {n: float(values[lambda_name(i)]) for i, n in enumerate(names)}
    mu_have = {e.modality for e in selected_experts(experts, selected) if e.training == "decoupled"}
    mus = {m: float(values[mu_name(m)]) for m in MODALITY_NAMES if m in mu_have}
    methods = [m for n in method_names_all() for m in (values[n] or [])]
    chosen = {m.partition("@")[0] for m in methods}  # ties and ties@core share ties' sliders
    params: dict[str, dict[str, float]] = {}
    for method, name in param_keys():
        if method in chosen:
            params.setdefault(method, {})[name] = values[param_name(method, name)]
    max_new, temperature, top_p = (values[n] for n in GENERATION)
    return StudioSettings(selected=selected, lambdas=lambdas, mus=mus, methods=methods, method_params=params,
                          max_new_tokens=int(max_new), temperature=float(temperature), top_p=float(top_p),
                          seed=int(values.get("seed") or 0))


def values_from_settings(experts: Mapping, settings: StudioSettings, present: Iterable[str] = ()) -> dict:
    """What the UI shows for ``settings``: the selection, slider views, methods, params, generation (by name)."""
    out: dict[str, object] = {SELECTED: list(settings.selected)}
    for group, choices in method_groups().items():
        names = {n for _, n in choices}
        out[methods_name(group)] = [m for m in settings.methods if m in names]
    lams = lambda_views(experts, settings.selected, settings.lambdas, present)
    out.update(zip(lambda_names_all(), lams))
    out.update(zip(mu_names_all(), mu_views(experts, settings.selected, settings.mus, present)))
    for method, name in param_keys():
        out[param_name(method, name)] = settings.hyper(method)[name]
    out.update({"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature, "top_p": settings.top_p})
    return out
