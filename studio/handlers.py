"""Event handlers as plain functions of (studio, named values) -> plain values.

app.py passes every component by its name (studio/controls.py) and binds each handler to
its components with a one-line adapter (SliderViews -> gradio updates, user errors ->
gr.Error); tests call them directly with a ``{name: value}`` mapping.
"""
from __future__ import annotations

import tempfile
from typing import Iterator, Mapping

from composition.config import CompositionConfig

from . import run
from .cards import cards_html, stopped_html
from .controls import QUESTION, SELECTED, lambda_views, media_of, mu_views, settings_from_values, values_from_settings
from .errors import StudioError
from .inputs import collect_files, load_user_inputs
from .learn import formulas_markdown, routing_html
from .session import NO_EXPERTS_HELP, Studio


def settings_of(studio: Studio, values: Mapping) -> CompositionConfig:
    """The named control values -> a validated composition config."""
    return settings_from_values(studio.cm.experts, values)


def default_settings(studio: Studio) -> CompositionConfig:
    """Every loaded expert, with the λ, μ and merge rule the expert folders ship with (else the paper's defaults)."""
    known = set(studio.cm.experts)
    shipped = studio.defaults
    return shipped.replace(experts=list(studio.cm.experts), lambdas={n: v for n, v in shipped.lambdas.items() if n in known})


def present_modalities(values: Mapping) -> set[str]:
    """The modalities that have an input among the named media values."""
    return set(collect_files(media_of(values)))


# --- experts --------------------------------------------------------------------------
def catalog_message(studio: Studio) -> str:
    """How many experts are loaded, the ones that failed to load, and loaded ones whose folder was removed."""
    if not studio.cm.experts:
        return NO_EXPERTS_HELP
    problems = "".join(f"\n- ⚠️ {p}" for p in [*studio.load_problems, *studio.folder_warnings()])
    return f"{len(studio.cm.experts)} expert(s) loaded.{problems}"


def catalog_status(studio: Studio) -> tuple[list[list[str]], str]:
    """(catalog rows, message) as they are now: a page load shows folders removed since startup."""
    return studio.catalog_rows(), catalog_message(studio)


def add_experts(studio: Studio, path: str, selected) -> tuple[list[list[str]], list[str], list[str], str]:
    """(catalog rows, all names, new selection, message); new experts are selected."""
    added = studio.add_expert_folder(path)
    selection = list(dict.fromkeys([*(selected or []), *added]))
    return studio.catalog_rows(), studio.expert_names, selection, f"added {', '.join(added)}. " + catalog_message(studio)


def slider_views(studio: Studio, values: Mapping, *, reset: bool = False):
    """(λ views, μ views) for the selection and inputs in ``values``: the values a Compare would apply.

    ``reset`` (a new selection, the Reset button) puts λ and μ back to the defaults: the ones the
    expert folders ship with (composition.json), else the paper's (λ = 1/K, μ = 1).
    """
    selected = values.get(SELECTED) or []
    present = present_modalities(values)
    settings = default_settings(studio) if reset else settings_of(studio, values)
    return (lambda_views(studio.cm.experts, selected, settings.lambdas, present, settings.merge_all_experts),
            mu_views(studio.cm.experts, selected, settings.mus, present))


def world_banner(studio: Studio) -> str:
    """What the bundled experts know, shown next to the inputs while any is loaded ('' otherwise)."""
    from composition.world_notes import is_bundled

    bundled = [e for e in studio.cm.experts.values() if is_bundled(e) and e.config.trained_on]
    if not bundled:
        return ""
    return (f"**The loaded experts are the bundled demo experts.** They know only {bundled[0].config.trained_on} "
            "The **Examples** below show it; any other file (a photo, a song) is answered in terms of that world. "
            "For real experts: `python -m composition import modelcompose SRC --out DIR`, then add DIR in the "
            "Experts tab or start with `python app.py --experts DIR` (or `--preset modelcompose` with a GPU).")


# --- compose / learn ------------------------------------------------------------------
def recompose(studio: Studio, values: Mapping, answered_with: str = "") -> tuple[str, str]:
    """(compose timing line, formulas markdown) for the current sliders and inputs.

    ``answered_with`` is what the answers on screen (or a generation still running) were
    made with (see ``answered_with``); when the sliders now differ, the line says so: a
    running generation keeps its coefficients, the next Compare uses the new ones.
    """
    settings = settings_of(studio, values)
    present = present_modalities(values)
    if not settings.experts:
        return "select experts to compose them", formulas_markdown(studio, settings, present)
    timing = run.compose_timing(studio, settings, present)
    now = run.plan_line(settings.plan(studio.cm, present))
    if answered_with and answered_with != now:
        timing += (f"  \n⚠️ The answers shown (or still generating) use **{answered_with}**; a running generation keeps "
                   "the coefficients it started with. Press **Compare** to answer with these.")
    return timing, formulas_markdown(studio, settings, present)


def lambda_curves(studio: Studio, values: Mapping) -> list:
    """Per λ slider, its coefficient over the layers (attention and MLP) as the current plan applies it:
    what each expert's "advanced" plot shows (None where that slider is hidden or its expert takes no part)."""
    from composition.errors import CompositionError

    from .controls import lambda_slots
    from .schedule_plot import lambda_curves as curves

    settings = settings_of(studio, values)
    slots = lambda_slots(studio.cm.experts, settings.experts or [])
    try:
        plan = settings.plan(studio.cm, present_modalities(values)) if settings.experts else None
    except CompositionError:
        plan = None  # the compose line says why; the plots stay empty
    return curves(studio.cm, plan, slots)


def answered_with(studio: Studio, values: Mapping) -> str:
    """The coefficients a Compare with these controls and inputs applies, in words (kept next to the answers)."""
    present = present_modalities(values)
    return run.plan_line(settings_of(studio, values).plan(studio.cm, present))


def token_routing(studio: Studio, variant: str, values: Mapping) -> str:
    settings = settings_of(studio, values)
    experts = studio.cm.experts
    inputs = load_user_inputs(collect_files(media_of(values)), settings.selection(experts))
    return routing_html(studio, values.get(QUESTION) or "What do these inputs have in common?", inputs, variant, settings)


# --- compare --------------------------------------------------------------------------
def compare_stream(studio: Studio, values: Mapping) -> Iterator[str]:
    settings = settings_of(studio, values)
    req = run.prepare(studio, settings, values.get(QUESTION) or "", collect_files(media_of(values)))
    yield from run.stream(req)


def compare_api(studio: Studio, question: str, **media) -> dict:
    """The /compare contract: default variants and coefficients over every loaded expert (``media``: by modality)."""
    req = run.prepare(studio, default_settings(studio), question, collect_files(media))
    return run.api_payload(run.run_blocking(req), req.warnings)


def empty_cards() -> str:
    return cards_html([])


def stopped_cards(page: str | None) -> str:
    """What the Stop button shows: the partial cards on screen, marked as stopped by the user."""
    return stopped_html(page)


# --- config ---------------------------------------------------------------------------
def save_config(studio: Studio, values: Mapping) -> str:
    """Path of a YAML file with the current composition."""
    text = settings_of(studio, values).to_yaml(studio.cm.experts, base_name=studio.cm.base.name)
    handle = tempfile.NamedTemporaryFile("w", prefix="composition-", suffix=".yaml", delete=False, encoding="utf-8")
    with handle:
        handle.write(text)
    return handle.name


def load_config(studio: Studio, path: str, values: Mapping | None = None) -> tuple[dict, str]:
    """(named control values to restore, message) from an uploaded YAML config."""
    if not path:
        raise StudioError("upload a .yaml config saved by this app first.")
    try:
        text = open(path, encoding="utf-8").read()
    except UnicodeDecodeError:
        raise StudioError("the uploaded config is not a text (YAML) file; upload the .yaml the Export tab saved.") from None
    settings, notes = CompositionConfig.from_yaml(text, studio.cm.experts, base_name=studio.cm.base.name)
    present = present_modalities(values or {})
    return values_from_settings(studio.cm.experts, settings, present), "config loaded." + "".join(f" Note: {n}" for n in notes)
