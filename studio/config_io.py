"""Save a composition as YAML and load it back into settings (validated, with clear errors)."""
from __future__ import annotations

import yaml

from composition.errors import CompositionError

from .session import Studio, expert_folder
from .settings import StudioSettings

CONFIG_FORMAT = "mllm-composition-studio/1"


def settings_to_yaml(studio: Studio, settings: StudioSettings, variants: list[str] | None = None) -> str:
    experts = studio.cm.experts
    data = {
        "format": CONFIG_FORMAT,
        "base": studio.cm.base.name,
        "experts": [{"name": n, "folder": folder.name if (folder := expert_folder(experts[n])) else None,
                     "modality": experts[n].modality, "training": experts[n].training}
                    for n in settings.selected if n in experts],
        "variants": variants or ["NaiveMC", "DAMC", "expert:*", *settings.methods],
        "coefficients": {"lambdas": dict(settings.lambdas), "mus": dict(settings.mus)},
        "methods": {m: settings.hyper(m) for m in settings.methods},
        "generation": {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                       "top_p": settings.top_p, "seed": settings.seed},
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _mapping(data: dict, key: str, where: str = "config") -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise CompositionError(f"{where} key {key!r} must be a mapping, got {type(value).__name__}; "
                               "save a config from the Export tab to see the expected layout.")
    return value


def settings_from_yaml(studio: Studio, text: str) -> tuple[StudioSettings, list[str]]:
    """Parse and validate a saved config; returns the settings and notes for the user."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CompositionError(f"the config is not valid YAML{where}; save a fresh one from the Export tab.") from None
    if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CompositionError(f"the config's format is {got!r}; expected {CONFIG_FORMAT!r} "
                               "(a file saved by this app's Export tab).")
    notes = []
    loaded = studio.cm.experts
    experts = data.get("experts") or []
    if not isinstance(experts, list):
        raise CompositionError("config key 'experts' must be a list of {name, folder}.")
    selected = []
    for item in experts:
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str):
            raise CompositionError(f"config expert entry {str(item)[:80]!r} has no name string; each entry is "
                                   "{name, folder} (save a config from the Export tab to see the layout).")
        if name not in loaded:
            folder = item.get("folder") if isinstance(item, dict) else None
            raise CompositionError(f"the config uses expert {name!r} (folder {folder!r}), which is not loaded; "
                                   f"add that folder in the Experts tab, then load the config again. Loaded: {sorted(loaded)}.")
        selected.append(name)
    if data.get("base") and data["base"] != studio.cm.base.name:
        notes.append(f"the config was saved with base {data['base']!r}; this app runs {studio.cm.base.name!r}.")
    coefficients = _mapping(data, "coefficients")
    methods = _mapping(data, "methods")
    generation = _mapping(data, "generation")
    unknown = sorted(set(generation) - {"max_new_tokens", "temperature", "top_p", "seed"})
    if unknown:
        raise CompositionError(f"config generation key {unknown[0]!r} is unknown; expected max_new_tokens, temperature, top_p, seed.")
    settings = StudioSettings(selected=selected, lambdas=_mapping(coefficients, "lambdas", "coefficients"),
                              mus=_mapping(coefficients, "mus", "coefficients"), methods=list(methods),
                              method_params={m: _mapping(methods, m, "methods") for m in methods}, **generation)
    return settings, notes
