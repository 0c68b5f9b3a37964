"""Event handlers as plain functions of (studio, component values) -> plain values.

app.py binds each to its components (a one-line adapter turns SliderViews into gradio
updates and ValueErrors into gr.Error); tests call them directly.
"""
from __future__ import annotations

import tempfile
from typing import Iterator, Sequence

from modalities import MODALITY_NAMES

from . import run
from .cards import cards_html, stopped_html
from .config_io import settings_from_yaml, settings_to_yaml
from .controls import controls_from_settings, lambda_views, mu_views, param_keys, settings_from_controls
from .inputs import collect_files, load_user_inputs
from .learn import formulas_markdown, routing_html
from .session import NO_EXPERTS_HELP, Studio
from .settings import MAX_LAMBDA_SLOTS, StudioSettings
from .variants import model_view

N_MU = len(MODALITY_NAMES)


def n_controls() -> int:
    """How many values the flat control list has (see settings_of)."""
    return 1 + MAX_LAMBDA_SLOTS + N_MU + 1 + len(param_keys()) + 3


def settings_of(studio: Studio, controls: Sequence) -> StudioSettings:
    """[selected, λ×MAX, μ×modalities, methods, params…, max_new_tokens, temperature, top_p] -> settings."""
    controls = list(controls)
    if len(controls) != n_controls():
        raise ValueError(f"expected {n_controls()} control values, got {len(controls)}; reload the page.")
    i = 0
    selected = controls[i]; i += 1
    lams = controls[i:i + MAX_LAMBDA_SLOTS]; i += MAX_LAMBDA_SLOTS
    mus = controls[i:i + N_MU]; i += N_MU
    methods = controls[i]; i += 1
    params = controls[i:i + len(param_keys())]; i += len(param_keys())
    max_new, temperature, top_p = controls[i:i + 3]
    return settings_from_controls(studio.cm.experts, selected or [], lams, mus, methods or [], params, max_new, temperature, top_p)


def default_settings(studio: Studio) -> StudioSettings:
    return StudioSettings(selected=list(studio.cm.experts))


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


def add_experts(studio: Studio, path: str, selected: Sequence[str]) -> tuple[list[list[str]], list[str], list[str], str]:
    """(catalog rows, all names, new selection, message); new experts are selected."""
    added = studio.add_expert_folder(path)
    selection = list(dict.fromkeys([*(selected or []), *added]))
    return studio.catalog_rows(), studio.expert_names, selection, f"added {', '.join(added)}. " + catalog_message(studio)


def selection_views(studio: Studio, selected: Sequence[str], lambdas=None, mus=None):
    """Slider views after the selection changed (λ back to 1/K over the new selection)."""
    return lambda_views(studio.cm.experts, selected or [], lambdas), mu_views(studio.cm.experts, selected or [], mus)


# --- compose / learn ------------------------------------------------------------------
def present_modalities(image=None, audio=None, video=None, point=None) -> set[str]:
    return set(collect_files(image, audio, video, point))


def recompose(studio: Studio, media: Sequence, controls: Sequence, answered_with: str = "") -> tuple[str, str]:
    """(compose timing line, formulas markdown) for the current sliders.

    ``answered_with`` is what the answers on screen (or a generation still running) were
    made with (see ``answered_with``); when the sliders now differ, the line says so: a
    running generation keeps its coefficients, the next Compare uses the new ones.
    """
    settings = settings_of(studio, controls)
    if not settings.selected:
        return "select experts to compose them", formulas_markdown(model_view(studio.cm, []), settings)
    timing = run.compose_timing(studio, settings, present_modalities(*media))
    now = run.settings_line(studio.cm.experts, settings)
    if answered_with and answered_with != now:
        timing += (f"  \n⚠️ The answers shown (or still generating) use **{answered_with}**; a running generation keeps "
                   "the coefficients it started with. Press **Compare** to answer with these.")
    return timing, formulas_markdown(model_view(studio.cm, settings.selected), settings)


def answered_with(studio: Studio, controls: Sequence) -> str:
    """The coefficients a Compare with these controls runs with, in words (kept by the UI next to the answers)."""
    return run.settings_line(studio.cm.experts, settings_of(studio, controls))


def token_routing(studio: Studio, question: str, variant: str, media: Sequence, controls: Sequence) -> str:
    settings = settings_of(studio, controls)
    inputs = load_user_inputs(collect_files(*media))
    view = model_view(studio.cm, settings.selected)
    return routing_html(view, question or "What do these inputs have in common?", inputs, variant, settings)


# --- compare --------------------------------------------------------------------------
def compare_stream(studio: Studio, question: str, media: Sequence, experts_without_input: bool,
                   controls: Sequence) -> Iterator[str]:
    settings = settings_of(studio, controls)
    req = run.prepare(studio, settings, question, collect_files(*media), experts_without_input=bool(experts_without_input))
    yield from run.stream(req)


def compare_api(studio: Studio, question: str, image=None, audio=None, video=None, point=None) -> dict:
    """The /compare contract: default variants and coefficients over every loaded expert."""
    req = run.prepare(studio, default_settings(studio), question, collect_files(image, audio, video, point))
    return run.api_payload(run.run_blocking(req), req.warnings)


def empty_cards() -> str:
    return cards_html([])


def stopped_cards(page: str | None) -> str:
    """What the Stop button shows: the partial cards on screen, marked as stopped by the user."""
    return stopped_html(page)


# --- config ---------------------------------------------------------------------------
def save_config(studio: Studio, controls: Sequence) -> str:
    """Path of a YAML file with the current composition."""
    text = settings_to_yaml(studio, settings_of(studio, controls))
    handle = tempfile.NamedTemporaryFile("w", prefix="composition-", suffix=".yaml", delete=False, encoding="utf-8")
    with handle:
        handle.write(text)
    return handle.name


def load_config(studio: Studio, path: str) -> tuple[dict, str]:
    """(control values to restore, message) from an uploaded YAML config."""
    if not path:
        raise ValueError("upload a .yaml config saved by this app first.")
    try:
        text = open(path, encoding="utf-8").read()
    except UnicodeDecodeError:
        raise ValueError("the uploaded config is not a text (YAML) file; upload the .yaml the Export tab saved.") from None
    settings, notes = settings_from_yaml(studio, text)
    return controls_from_settings(studio.cm.experts, settings), "config loaded." + "".join(f" Note: {n}" for n in notes)
