"""One composition config, owned by the engine: who takes part, with which coefficients, and how answers are made.

The app's settings, the CLI's options (``--config FILE``, with flags over the file) and the
YAML file a user saves are all this class, and it plans through the engine
(``config.plan(cm, present)``), so no layer works out participants or coefficients again.

λ: an expert with no value (absent, ``None`` or ``auto`` in the YAML) gets the paper's
default, 1/K over the experts of its kind that take part (those with an input). A number
is the user's and is never replaced, whatever inputs come and go. ``lambda_scale`` s makes
every auto λ s·(1/K), for the shared composition and DAMC alike (YAML
``coefficients.lambda_scale``, CLI ``--lambda-scale``; 1 is the paper's).

    config = CompositionConfig(experts=["image", "audio"], lambdas={"image": 0.5, "audio": 0.5})
    plan = config.plan(cm, present={"image", "audio", "video"})     # λ image 0.5, audio 0.5; video 1/3
    text = config.to_yaml(cm.experts, base_name=cm.base.name)
    again, notes = CompositionConfig.from_yaml(text, cm.experts)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import CompositionError
from .generate import GenerationConfig
from .schedules import Schedule, parse_coefficient, plain
from .variants import COEF_RANGE, EXPERT_PREFIX, Coefficients, VariantSpec, applied_lambdas

CONFIG_FORMAT = "mllm-composition-studio/1"
AUTO = "auto"
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "seed")
# The variants entry of a config that asks for the defaults (older files wrote it this way too).
DEFAULT_VARIANTS_MARK = EXPERT_PREFIX + "*"


@dataclass
class CompositionConfig:
    """Everything a composition request needs besides its inputs, validated on construction.

    Args:
        experts: names of the experts taking part; None: every loaded expert.
        lambdas: λ per expert name (the text merge); an expert without a value is auto (1/K). A value
            may be a schedule over layers and modules (``composition.schedules``).
        mus: μ per modality (the modality deltas); default 1; a schedule too.
        lambda_scale: every auto λ is lambda_scale·(1/K) (NaiveMC's and DAMC's alike); default 1, the
            paper's 1/K. A λ in ``lambdas`` is never scaled.
        variants: variant names to run; None: the defaults (NaiveMC, DAMC, each expert with an
            input) plus ``methods``.
        methods: merge methods added to the defaults as comparison columns (registry names,
            ``<method>@core`` for the core-space form).
        method_params: ``{method: {param: value}}``; missing ones take the registry defaults.
        merge_all_experts: compositions merge every selected expert whatever inputs are given
            (the original's merged checkpoints), not only those with an input (the studio's rule).
        experts_without_input: the defaults also run selected experts that got no input.
        max_new_tokens, temperature, top_p, seed: generation (temperature 0 is greedy).
        base: the base the config was saved with (a different loaded base is noted, not refused).
    """

    experts: list[str] | None = None
    lambdas: dict[str, float | Schedule | None] = field(default_factory=dict)
    mus: dict[str, float | Schedule] = field(default_factory=dict)
    lambda_scale: float = 1.0
    variants: list[str] | None = None
    methods: list[str] = field(default_factory=list)
    method_params: dict[str, dict[str, float]] = field(default_factory=dict)
    merge_all_experts: bool = False
    experts_without_input: bool = False
    max_new_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    base: str | None = field(default=None, compare=False)  # informational: where the config was saved
    notes: list[str] = field(default_factory=list, compare=False, repr=False)  # renamed parameters, set on validation

    def __post_init__(self) -> None:
        from .methods import get_method
        from .methods.registry import split_space

        if self.experts is not None:
            self.experts = [str(n) for n in _listed(self.experts, "experts")]
        self.lambdas = {str(k): _lambda_value(k, v) for k, v in _mapping(self.lambdas, "lambdas").items()}
        self.lambdas = {k: v for k, v in self.lambdas.items() if v is not None}  # auto: not a value
        self.mus = {str(k): parse_coefficient(v, f"μ for {k!r}", COEF_RANGE) for k, v in _mapping(self.mus, "mus").items()}
        if isinstance(self.lambda_scale, int) and not isinstance(self.lambda_scale, bool):
            self.lambda_scale = float(self.lambda_scale)
        Coefficients(self.lambdas, self.mus, self.lambda_scale)  # range and name checks, with the engine's messages
        self.methods = [str(m) for m in _listed(self.methods, "methods")]
        for method in self.methods:
            split_space(method)  # unknown name or space -> an error listing what is accepted
        if self.variants is not None:
            self.variants = [str(v) for v in _listed(self.variants, "variants")]
            self.variant_specs()  # unknown names are refused now, not at the first request
        clean, self.notes = {}, []
        for method, params in _mapping(self.method_params, "method_params").items():
            # Hyper-parameters belong to the method, shared by its dense and @core columns.
            name = split_space(str(method))[0]
            values, notes = get_method(name).resolve_hyper(dict(_mapping(params, f"method_params[{method!r}]")))
            clean[name] = values
            self.notes += notes  # an old name (drop_rate) still works; the note names the new one
        self.method_params = clean
        for flag in ("merge_all_experts", "experts_without_input"):
            if not isinstance(getattr(self, flag), bool):
                raise CompositionError(f"{flag} is {getattr(self, flag)!r}; expected true or false.")
        generation = self.generation()  # validates max_new_tokens, temperature, top_p and seed
        self.max_new_tokens, self.temperature = generation.max_new_tokens, generation.temperature
        self.top_p, self.seed = generation.top_p, generation.seed

    # --- what it asks of the engine ---------------------------------------------------
    def generation(self) -> GenerationConfig:
        return GenerationConfig(self.max_new_tokens, self.temperature, self.top_p, self.seed)

    def hyper(self, method: str) -> dict[str, float]:
        """The hyper-parameters of ``method`` (``ties`` or ``ties@core``): the user's, else the registry defaults."""
        from .methods import get_method
        from .methods.registry import split_space

        name = split_space(method)[0]
        values = get_method(name).defaults()
        values.update(self.method_params.get(name, {}))
        return values

    def selection(self, loaded: Mapping) -> list:
        """The loaded experts taking part, in load order."""
        chosen = set(loaded) if self.experts is None else set(self.experts)
        return [e for n, e in loaded.items() if n in chosen]

    def coefficients(self, loaded: Mapping | None = None, present: Iterable[str] = ()) -> Coefficients:
        """The coefficients to send the engine for inputs of ``present`` modalities.

        Without ``loaded`` experts: the user's values only (the engine gives every auto λ lambda_scale/K).
        With them: nothing when every λ is auto; otherwise the user's λ and, for the auto ones,
        the default the engine's rule gives for these inputs (the same values, written out).
        """
        scale = self.lambda_scale
        if loaded is None:
            return Coefficients(dict(self.lambdas), dict(self.mus), scale)
        explicit = {n: v for n, v in self.lambdas.items() if n in loaded}
        if not explicit:
            return Coefficients({}, dict(self.mus), scale)
        applied = applied_lambdas(self.selection(loaded), set(present), Coefficients(explicit, lambda_scale=scale),
                                  self.merge_all_experts)
        return Coefficients({**applied, **explicit}, dict(self.mus), scale)

    def variant_specs(self) -> list[VariantSpec] | None:
        """The explicit variants as specs, each method with its hyper-parameters (None: the defaults)."""
        if self.variants is None:
            return None
        return [VariantSpec.parse(v, self.method_params.get(v.partition("@")[0])) for v in self.variants]

    def plan(self, cm, present: Iterable[str]):
        """The engine's plan for these inputs: the variants, who takes part, the coefficients applied."""
        present = set(present)
        methods = self.methods if self.variants is None else ()
        return cm.plan(present, self.variant_specs(), self.coefficients(cm.experts, present), selection=self.experts,
                       methods=methods, hyper={m: self.hyper(m) for m in methods},
                       experts_without_input=self.experts_without_input, merge_all_experts=self.merge_all_experts)

    def check_against(self, loaded: Mapping) -> None:
        """Every expert the config names is loaded (a typo in a name is an error, not a silent no-op)."""
        names = sorted(loaded)
        for what, given in (("experts", self.experts or []), ("λ", self.lambdas)):
            unknown = [n for n in given if n not in loaded]
            if unknown:
                raise CompositionError(f"the config's {what} name expert {unknown[0]!r}, which is not loaded; "
                                       f"loaded experts: {names}.")

    def replace(self, **changes) -> "CompositionConfig":
        """A copy with some fields changed, validated again (flags over a file, a reset, a tuned λ)."""
        return dataclasses.replace(self, **changes)

    # --- YAML ---------------------------------------------------------------------------
    def to_yaml(self, loaded: Mapping | None = None, base_name: str | None = None) -> str:
        """The config as YAML (format ``mllm-composition-studio/1``); ``loaded`` adds each expert's folder,
        modality and training, so a reader knows what to load."""
        import yaml

        loaded = loaded or {}
        names = self.experts if self.experts is not None else list(loaded)
        experts = []
        for n in names:
            expert = loaded.get(n)
            if expert is None:
                experts.append({"name": n})
                continue
            folder = getattr(expert, "path", None) or getattr(expert, "folder", None)
            experts.append({"name": n, "folder": Path(folder).name if folder else None, "modality": expert.modality,
                            "training": expert.training})
        lambdas = {n: self.lambdas.get(n, AUTO) for n in names}
        lambdas.update(self.lambdas)
        lambdas = {n: plain(v) for n, v in lambdas.items()}
        data = {
            "format": CONFIG_FORMAT,
            "base": base_name or self.base,
            "experts": experts,
            "variants": list(self.variants) if self.variants is not None else ["NaiveMC", "DAMC", DEFAULT_VARIANTS_MARK,
                                                                                *self.methods],
            "coefficients": {"lambdas": lambdas, "mus": {m: plain(v) for m, v in self.mus.items()},
                             **({"lambda_scale": self.lambda_scale} if self.lambda_scale != 1.0 else {})},
            "methods": {m: self.hyper(m) for m in self.methods},
            "generation": {k: getattr(self, k) for k in GENERATION_KEYS},
        }
        if self.merge_all_experts:
            data["merge_all_experts"] = True
        if self.experts_without_input:
            data["experts_without_input"] = True
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str, loaded: Mapping | None = None,
                  base_name: str | None = None) -> tuple["CompositionConfig", list[str]]:
        """Parse and validate a saved config; returns it and notes for the user.

        ``loaded``: the experts now loaded; a config naming another is refused, saying which
        folder to add. ``base_name``: the loaded base; a config saved with another is noted.
        """
        import yaml

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
        experts = data.get("experts")
        if experts is not None and not isinstance(experts, list):
            raise CompositionError("config key 'experts' must be a list of {name, folder}.")
        selected = None if experts is None else [_expert_name(item, loaded) for item in experts]
        base = data.get("base")
        if base and base_name and base != base_name:
            notes.append(f"the config was saved with base {base!r}; this app runs {base_name!r}.")
        coefficients = _section(data, "coefficients")
        unknown = sorted(set(coefficients) - {"lambdas", "mus", "lambda_scale"})
        if unknown:
            raise CompositionError(f"config coefficients key {unknown[0]!r} is unknown; expected lambdas, mus, lambda_scale.")
        methods = _section(data, "methods")
        generation = _section(data, "generation")
        unknown = sorted(set(generation) - set(GENERATION_KEYS))
        if unknown:
            raise CompositionError(f"config generation key {unknown[0]!r} is unknown; expected {', '.join(GENERATION_KEYS)}.")
        variants = data.get("variants")
        if isinstance(variants, list) and DEFAULT_VARIANTS_MARK in variants:
            variants = None  # the defaults, written out (as every older file has them)
        config = cls(experts=selected, lambdas=_section(coefficients, "lambdas", "coefficients"),
                     mus=_section(coefficients, "mus", "coefficients"),
                     lambda_scale=coefficients.get("lambda_scale", 1.0), variants=variants, methods=list(methods),
                     method_params={m: _section(methods, m, "methods") for m in methods},
                     merge_all_experts=data.get("merge_all_experts", False),
                     experts_without_input=data.get("experts_without_input", False), base=base, **generation)
        if loaded is not None:
            config.check_against(loaded)
        return config, notes


# --- validation helpers ---------------------------------------------------------------
def _lambda_value(name, value) -> float | Schedule | None:
    """A λ as given: a number, a schedule over layers (anchors, or {filter, value} entries), or auto (None, "auto")."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    if isinstance(value, (str, bool)):
        raise CompositionError(f"λ for {name!r} is {value!r}; expected a number, a list of anchors such as [0, 0.5, 1], "
                               f"or {AUTO!r} (the paper's 1/K).")
    return parse_coefficient(value, f"λ for {name!r}", COEF_RANGE)


def _mapping(value, what: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CompositionError(f"{what} must be a mapping, got {type(value).__name__}.")
    return value


def _listed(value, what: str) -> Sequence:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise CompositionError(f"{what} must be a list, got {type(value).__name__}.")
    return value


def _section(data: dict, key: str, where: str = "config") -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise CompositionError(f"{where} key {key!r} must be a mapping, got {type(value).__name__}; "
                               "save a config from the Export tab to see the expected layout.")
    return value


def _expert_name(item, loaded: Mapping | None) -> str:
    name = item.get("name") if isinstance(item, dict) else item
    if not isinstance(name, str):
        raise CompositionError(f"config expert entry {str(item)[:80]!r} has no name string; each entry is "
                               "{name, folder} (save a config from the Export tab to see the layout).")
    if loaded is not None and name not in loaded:
        folder = item.get("folder") if isinstance(item, dict) else None
        raise CompositionError(f"the config uses expert {name!r} (folder {folder!r}), which is not loaded; "
                               f"add that folder in the Experts tab (or --experts), then load the config again. "
                               f"Loaded: {sorted(loaded)}.")
    return name


def shipped_config(paths: Sequence[str | Path] | None) -> CompositionConfig:
    """The config a folder of experts ships with (``composition.json``: λ, μ and the merge rule of a
    merged checkpoint of the original), else the paper's defaults."""
    from .discovery import default_coefficients, ships_merge_all_experts

    shipped = default_coefficients(paths)
    return CompositionConfig(lambdas=dict(shipped.lambdas), mus=dict(shipped.mus),
                             merge_all_experts=ships_merge_all_experts(paths))


def load_config_file(path: str | Path, loaded: Mapping | None = None,
                     base_name: str | None = None) -> tuple[CompositionConfig, list[str]]:
    """``from_yaml`` of a file, with one clear message when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CompositionError(f"{path.name} is not a text (YAML) file; pass a config saved by the app or "
                               "CompositionConfig.to_yaml.") from None
    except OSError as exc:
        raise CompositionError(f"config {path.name!r} could not be read ({exc.strerror or exc}); check the path.") from None
    return CompositionConfig.from_yaml(text, loaded, base_name)
