"""The UI's controls by name, and the mapping between their values and the composition config.

The app declares its components once, under the names below, and passes them to every
event by name (gradio's ``inputs_kwargs``); handlers receive a ``{name: value}`` mapping.
The app pre-builds MAX_LAMBDA_SLOTS λ sliders, each with an "auto" box, one μ slider per
registered modality and one slider per (method, hyper-parameter) of the registry, so adding
a modality or a method adds controls here without a signature to edit anywhere.

λ is auto until the user moves its slider: an auto slider shows the paper's 1/K over the
experts that get an input (the engine's rule, asked here, never worked out again), and
follows the inputs; moving it unticks "auto" and the value is the user's, kept whatever
inputs come. Ticking "auto" again hands it back to the engine.

Each λ slider and each μ slider has a text box ("advanced") for a schedule over the layers
(``0, 0.5, 1``, or YAML entries with module filters, ``composition.schedules``): while it
holds one, the schedule is that coefficient and the slider is locked; emptying it hands the
coefficient back to the slider.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from composition.config import CompositionConfig
from composition.errors import CompositionError
from composition.methods import list_methods
from composition.methods.registry import GROUPS
from composition.schedules import Schedule, parse_text
from composition.variants import COEF_RANGE, Coefficients, applied_lambdas, in_prompt_order, text_merge_pool
from modalities import MODALITY_NAMES

MAX_LAMBDA_SLOTS = 8  # the UI pre-builds this many λ sliders; more selected experts is an error

SELECTED = "selected"
GENERATION = ("max_new_tokens", "temperature", "top_p")
QUESTION = "question"
NO_INPUT = "experts_without_input"
MERGE_ALL = "merge_all_experts"


def lambda_name(i: int) -> str:
    return f"lambda_{i}"


def lambda_auto_name(i: int) -> str:
    return f"lambda_auto_{i}"


def mu_name(modality: str) -> str:
    return f"mu_{modality}"


def lambda_schedule_name(i: int) -> str:
    return f"lambda_schedule_{i}"


def mu_schedule_name(modality: str) -> str:
    return f"mu_schedule_{modality}"


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


def lambda_auto_names_all() -> list[str]:
    return [lambda_auto_name(i) for i in range(MAX_LAMBDA_SLOTS)]


def mu_names_all() -> list[str]:
    return [mu_name(m) for m in MODALITY_NAMES]


def lambda_schedule_names_all() -> list[str]:
    return [lambda_schedule_name(i) for i in range(MAX_LAMBDA_SLOTS)]


def mu_schedule_names_all() -> list[str]:
    return [mu_schedule_name(m) for m in MODALITY_NAMES]


def control_names() -> list[str]:
    """Every composition control, by name: what a settings value set must hold."""
    return [SELECTED, *lambda_names_all(), *lambda_auto_names_all(), *lambda_schedule_names_all(), *mu_names_all(),
            *mu_schedule_names_all(), MERGE_ALL, *method_names_all(), *[param_name(m, p) for m, p in param_keys()],
            *GENERATION]


def media_names() -> list[str]:
    return [media_name(m) for m in MODALITY_NAMES]


def media_of(values: Mapping) -> dict[str, object]:
    """``{modality: value}`` of the media controls among ``values`` (missing ones are None)."""
    return {m: values.get(media_name(m)) for m in MODALITY_NAMES}


# --- which experts get a λ slider ------------------------------------------------------
def selected_experts(experts: Mapping, selected: Iterable[str]) -> list:
    """The loaded experts among ``selected``, in load order."""
    chosen = set(selected or [])
    return [e for n, e in experts.items() if n in chosen]


def lambda_names(experts: Mapping, selected: Iterable[str]) -> list[str]:
    """One λ slider per expert whose text delta a text merge of the selection can use (prompt order).

    The engine owns the rule (``composition.variants.text_merge_pool``); with inputs, only
    the experts that get one take part (see ``lambda_views``).
    """
    pool, _ = text_merge_pool(selected_experts(experts, selected), set())
    return [e.name for e in in_prompt_order(pool.values())]


def lambda_slots(experts: Mapping, selected: Iterable[str]) -> list[str | None]:
    """Expert name per pre-built λ slider (None = hidden), at most MAX_LAMBDA_SLOTS."""
    names = lambda_names(experts, selected)
    if len(names) > MAX_LAMBDA_SLOTS:
        raise CompositionError(f"{len(names)} experts selected for the text merge; the app shows at most "
                               f"{MAX_LAMBDA_SLOTS} λ sliders. Deselect some experts.")
    return names + [None] * (MAX_LAMBDA_SLOTS - len(names))


@dataclass
class SliderView:
    """What one pre-built slider should show (``auto``: a λ the engine sets, 1/K; None for other sliders)."""

    visible: bool
    label: str
    value: float
    interactive: bool = True
    auto: bool | None = None
    schedule: str = ""  # what the slider's advanced box shows: its schedule as typed, '' when the slider holds the value


def lambda_views(experts: Mapping, selected: Sequence[str], values: Mapping[str, float | None] | None = None,
                 present: Iterable[str] = (), merge_all: bool = False) -> list[SliderView]:
    """λ sliders for the selected text-merge experts, showing the values the current inputs will use.

    ``values``: the user's λ by expert; an expert without one (or with None) is auto. The
    engine decides who takes part and what auto means (``applied_lambdas``): with inputs, an
    expert without one is not merged, and its slider says so.
    """
    slots = lambda_slots(experts, selected)
    names = [n for n in slots if n]
    user = {n: v if isinstance(v, Schedule) else float(v) for n, v in (values or {}).items() if n in names and v is not None}
    coefficients = Coefficients(user)
    applied = applied_lambdas(selected_experts(experts, selected), set(present), coefficients, merge_all)
    views = []
    for n in slots:
        if n is None:
            views.append(SliderView(False, "λ (unused)", 0.0, auto=True))
        elif isinstance(user.get(n), Schedule):  # the schedule in its advanced box is this λ: the slider is locked
            views.append(SliderView(True, f"{_lambda_label(n, experts[n].modality)}: over the layers (advanced)",
                                    coefficients.auto_lam(max(len(applied), 1)), interactive=False, auto=False,
                                    schedule=schedule_text(user[n])))
        elif n in applied:
            views.append(SliderView(True, _lambda_label(n, experts[n].modality), float(applied[n]), auto=n not in user))
        else:
            modality = experts[n].modality
            # Not merged with these inputs: an auto slider shows the default the others have; a moved one keeps its value.
            idle = user.get(n, 1 / len(applied) if applied else 1 / len(names))
            views.append(SliderView(True, f"{_lambda_label(n, modality)}: no {modality} input, not merged",
                                    float(idle), interactive=False, auto=n not in user))
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
        scheduled = isinstance(values.get(m), Schedule)
        label = f"μ {m} (modality)" + (f": no {m} input" if idle else "") + (": over the layers (advanced)" if scheduled else "")
        views.append(SliderView(m in have, label, 1.0 if scheduled else float(values.get(m, 1.0)),
                                interactive=not idle and not scheduled, schedule=schedule_text(values.get(m))))
    return views


def schedule_text(value) -> str:
    """What an advanced box shows for a coefficient: '' for a number (the slider holds it), else the schedule
    as typed: ``0, 0.5, 1`` for anchors, YAML flow for module filters."""
    if not isinstance(value, Schedule):
        return ""
    plain = value.plain()
    if all(isinstance(v, (int, float)) for v in plain):
        return ", ".join(f"{v:g}" for v in plain)
    import yaml

    return yaml.safe_dump(plain, default_flow_style=True, width=10_000).strip()


def _box(values: Mapping, name: str, what: str):
    """A schedule typed in an advanced box (None when it is empty: the slider holds the value)."""
    text = values.get(name)
    if not isinstance(text, str) or not text.strip():
        return None
    return parse_text(text, what, COEF_RANGE)


def settings_from_values(experts: Mapping, values: Mapping[str, object]) -> CompositionConfig:
    """The named control values -> a validated composition config (a value missing is a stale page)."""
    missing = [n for n in control_names() if n not in values]
    if missing:
        raise CompositionError(f"the page sent no value for {missing[0]!r}; reload the page.")
    selected = [n for n in (values[SELECTED] or []) if n in experts]
    names = [n for n in lambda_slots(experts, selected) if n]
    lambdas = {}
    for i, n in enumerate(names):
        scheduled = _box(values, lambda_schedule_name(i), f"λ for {n!r}")
        lambdas[n] = scheduled if scheduled is not None else None if values[lambda_auto_name(i)] else float(values[lambda_name(i)])
    mu_have = {e.modality for e in selected_experts(experts, selected) if e.training == "decoupled"}
    mus = {}
    for m in MODALITY_NAMES:
        if m in mu_have:
            scheduled = _box(values, mu_schedule_name(m), f"μ for {m!r}")
            mus[m] = scheduled if scheduled is not None else float(values[mu_name(m)])
    methods = [m for n in method_names_all() for m in (values[n] or [])]
    chosen = {m.partition("@")[0] for m in methods}  # ties and ties@core share ties' sliders
    params: dict[str, dict[str, float]] = {}
    for method, name in param_keys():
        if method in chosen:
            params.setdefault(method, {})[name] = values[param_name(method, name)]
    max_new, temperature, top_p = (values[n] for n in GENERATION)
    return CompositionConfig(experts=selected, lambdas=lambdas, mus=mus, methods=methods, method_params=params,
                             max_new_tokens=int(max_new), temperature=float(temperature), top_p=float(top_p),
                             seed=int(values.get("seed") or 0), experts_without_input=bool(values.get(NO_INPUT)),
                             merge_all_experts=bool(values[MERGE_ALL]))


def values_from_settings(experts: Mapping, settings: CompositionConfig, present: Iterable[str] = ()) -> dict:
    """What the UI shows for ``settings``: the selection, slider views, methods, params, generation (by name)."""
    selected = list(settings.experts if settings.experts is not None else experts)
    out: dict[str, object] = {SELECTED: selected}
    for group, choices in method_groups().items():
        names = {n for _, n in choices}
        out[methods_name(group)] = [m for m in settings.methods if m in names]
    lams = lambda_views(experts, selected, settings.lambdas, present, settings.merge_all_experts)
    mus = mu_views(experts, selected, settings.mus, present)
    out.update(zip(lambda_names_all(), lams))
    out.update(zip(lambda_auto_names_all(), (v.auto for v in lams)))
    out.update({lambda_schedule_name(i): v.schedule for i, v in enumerate(lams)})
    out.update(zip(mu_names_all(), mus))
    out.update({mu_schedule_name(m): v.schedule for m, v in zip(MODALITY_NAMES, mus)})
    out[MERGE_ALL] = settings.merge_all_experts
    for method, name in param_keys():
        out[param_name(method, name)] = settings.hyper(method)[name]
    out.update({"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature, "top_p": settings.top_p})
    return out
