"""Coefficient schedules: a λ or μ that varies over the layers and by module (mergekit's convention).

A coefficient is a number, as the paper has it, or a *schedule*:

- a list of anchors, ``[0, 0.5, 1]``: interpolated linearly over the layers. Layer ``i`` of
  ``L`` sits at ``t = i / (L - 1)``; the anchors sit evenly on ``[0, 1]``, so the value is
  ``(1 - f)·a[j] + f·a[j+1]`` with ``j + f = t·(n - 1)`` (mergekit ``config.evaluate_setting``
  and ``plan.plan_slice``, arcee-ai/mergekit);
- a list of ``{filter, value}`` entries, each value a number or an anchor list: a module
  takes the first entry whose filter is a substring of its name (``self_attn``, ``mlp``,
  ``q_proj``...); an entry without a filter (or ``"*"``) matches every module, so it belongs
  last. A module no entry matches keeps the coefficient it would have had without the
  schedule (the auto λ = 1/K, μ = 1), as mergekit falls back to the next level's setting.

The engine turns a schedule into one value per routed module (``ModuleLayout.values``);
the routed layers read them from the coefficient table, so a schedule costs what a λ costs.

    parse_coefficient([{"filter": "self_attn", "value": [0, 1]}, {"value": 0}], "λ for 'image'")
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import CompositionError

CATCH_ALL = "*"
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_MODULE_KINDS = ("self_attn", "mlp")  # filters a user is offered besides the projection names


@dataclass(frozen=True)
class ScheduleEntry:
    """One ``{filter, value}`` entry: anchors over the layers (one anchor: a constant)."""

    anchors: tuple[float, ...]
    filter: str | None = None  # None: every module

    def matches(self, module: str) -> bool:
        return self.filter is None or self.filter in module

    def at(self, t: float) -> float:
        return interpolate(self.anchors, t)

    def plain(self):
        value = self.anchors[0] if len(self.anchors) == 1 else list(self.anchors)
        return {"value": value} if self.filter is None else {"filter": self.filter, "value": value}


@dataclass(frozen=True)
class Schedule:
    """A coefficient over layers and modules (see the module docstring). Build it with ``parse_coefficient``."""

    entries: tuple[ScheduleEntry, ...]

    def at(self, module: str, t: float) -> float | None:
        """The value for ``module`` at layer position ``t`` in [0, 1]; None when no entry matches it."""
        for entry in self.entries:
            if entry.matches(module):
                return entry.at(t)
        return None

    def plain(self):
        """The YAML/JSON form it was given in: an anchor list, or a list of ``{filter, value}`` entries."""
        if len(self.entries) == 1 and self.entries[0].filter is None:
            return list(self.entries[0].anchors)
        return [entry.plain() for entry in self.entries]

    def describe(self) -> str:
        """``0→0.5→1 over layers``, ``self_attn 0→1; mlp 0``: the schedule in words, for captions."""
        def anchors(entry: ScheduleEntry) -> str:
            text = "→".join(f"{a:g}" for a in entry.anchors)
            return text + (" over layers" if len(entry.anchors) > 1 and entry.filter is None and len(self.entries) == 1 else "")

        return "; ".join((f"{e.filter} " if e.filter else ("elsewhere " if len(self.entries) > 1 else "")) + anchors(e)
                         for e in self.entries)

    def check_filters(self, modules: Iterable[str], what: str) -> None:
        """Refuse a filter that matches none of the routed ``modules`` (it could never apply)."""
        modules = list(modules)
        for entry in self.entries:
            if entry.filter is not None and not any(entry.filter in m for m in modules):
                raise CompositionError(
                    f"{what}: filter {entry.filter!r} matches no module the experts change; use one of "
                    f"{', '.join(module_filters(modules))} (or no filter for every module).")


def interpolate(anchors: Sequence[float], t: float) -> float:
    """mergekit's gradient: anchors evenly on [0, 1], linear in between (one anchor: a constant)."""
    if len(anchors) == 1:
        return float(anchors[0])
    scaled = min(max(t, 0.0), 1.0) * (len(anchors) - 1)
    i0 = min(int(scaled), len(anchors) - 1)
    i1 = min(len(anchors) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * float(anchors[i0]) + frac * float(anchors[i1])


def parse_coefficient(raw, what: str, coef_range: tuple[float, float]) -> float | Schedule:
    """A λ or μ as a user gives it (number, anchor list, ``{filter, value}`` entries), checked.

    Args:
        raw: the value from YAML, JSON, the API or the CLI (already parsed from text).
        what: how the message names it, e.g. ``"λ for 'image'"``.
        coef_range: the inclusive range every number must lie in.
    Returns:
        A float for a number, else a ``Schedule`` (kept as given, never collapsed to a number).
    """
    if isinstance(raw, Schedule):
        return raw
    if _is_number(raw):
        return _number(raw, what, coef_range)
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        raise CompositionError(f"{what} is {raw!r}; expected a number, a list of anchors such as [0, 0.5, 1], "
                               "or a list of {filter, value} entries.")
    if not raw:
        raise CompositionError(f"{what} is an empty list; give a number or at least one anchor, e.g. [0, 0.5, 1].")
    if all(_is_number(v) or not isinstance(v, dict) for v in raw):
        return Schedule((ScheduleEntry(_anchors(raw, what, coef_range)),))
    entries = []
    for i, item in enumerate(raw):
        where = f"{what}, entry {i + 1}"
        if not isinstance(item, dict):
            raise CompositionError(f"{where} is {item!r}; in a list of entries each one is a {{filter, value}} mapping.")
        unknown = sorted(set(item) - {"filter", "value"})
        if unknown:
            raise CompositionError(f"{where} has the key {unknown[0]!r}; an entry has only 'filter' and 'value'.")
        if "value" not in item:
            raise CompositionError(f"{where} has no 'value'; give a number or a list of anchors.")
        flt = item.get("filter")
        if flt is not None and (not isinstance(flt, str) or not flt.strip()):
            raise CompositionError(f"{where}: filter {flt!r} is not a module name; use e.g. 'self_attn', 'mlp' or 'q_proj'.")
        flt = None if flt is None or flt.strip() == CATCH_ALL else flt.strip()
        if entries and entries[-1].filter is None:
            raise CompositionError(f"{where} comes after an entry for every module, so it can never apply; "
                                   "put the entry without a filter last.")
        value = item["value"]
        anchors = (_number(value, where, coef_range),) if _is_number(value) else _anchors(value, where, coef_range)
        entries.append(ScheduleEntry(anchors, flt))
    return Schedule(tuple(entries))


def parse_text(text: str, what: str, coef_range: tuple[float, float]) -> float | Schedule:
    """A coefficient typed in a text box or on the command line: ``0.5``, ``0, 0.5, 1`` or YAML flow
    (``[{filter: self_attn, value: [0, 1]}, {value: 0}]``)."""
    import yaml

    text = text.strip()
    if not text:
        raise CompositionError(f"{what} is empty; give a number or anchors such as 0, 0.5, 1.")
    if text[0] in "[{":
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise CompositionError(f"{what}: {text!r} is not valid YAML ({first}); write e.g. "
                                   "[{filter: self_attn, value: [0, 1]}, {value: 0}].") from None
        return parse_coefficient(raw, what, coef_range)
    parts = [p.strip() for p in text.split(",")]
    values = []
    for part in parts:
        try:
            values.append(float(part))
        except ValueError:
            raise CompositionError(f"{what}: {part!r} is not a number; write a number or anchors such as 0, 0.5, 1.") from None
    return parse_coefficient(values[0] if len(values) == 1 and "," not in text else values, what, coef_range)


def plain(value):
    """A coefficient as YAML/JSON holds it: the number, or the schedule's plain form."""
    return value.plain() if isinstance(value, Schedule) else value


def describe_plain(value) -> str:
    """A coefficient as JSON holds it, in words: ``0.50``, or the schedule's ``describe()``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f}"
    return parse_coefficient(value, "coefficient", (-math.inf, math.inf)).describe()


@dataclass(frozen=True)
class ModuleLayout:
    """The routed modules of a base in their fixed order (the coefficient table's module axis), and its layer count."""

    modules: tuple[str, ...]
    n_layers: int

    def position(self, module: str) -> float:
        """Where ``module`` sits over the layers, ``t`` in [0, 1] (mergekit: layer/(L-1); 1 for a single layer).
        A module outside the numbered layers sits at 0."""
        match = _LAYER_RE.search(module)
        if match is None:
            return 0.0
        return int(match.group(1)) / (self.n_layers - 1) if self.n_layers > 1 else 1.0

    def values(self, schedule: Schedule, fallback: float, what: str) -> tuple[float, ...]:
        """The schedule at every routed module (``fallback`` where no entry matches); refuses a filter matching none."""
        schedule.check_filters(self.modules, what)
        out = []
        for module in self.modules:
            value = schedule.at(module, self.position(module))
            out.append(fallback if value is None else value)
        return tuple(out)

    def layer_curve(self, schedule: Schedule, fallback: float, module: str | None = None) -> list[float]:
        """The value per layer for one module kind (the first routed module of each layer whose name holds
        ``module``; default: the first routed module of each layer), for a plot."""
        curve = []
        for layer in range(self.n_layers):
            names = [m for m in self.modules if layer_of(m) == layer and (module is None or module in m)]
            if names:
                value = schedule.at(names[0], self.position(names[0]))
                curve.append(fallback if value is None else value)
        return curve

    @staticmethod
    def of(modules: Iterable[str], n_layers: int | None = None) -> "ModuleLayout":
        modules = tuple(sorted(modules, key=_module_order))
        seen = [layer_of(m) for m in modules if layer_of(m) is not None]
        return ModuleLayout(modules, n_layers or (max(seen) + 1 if seen else 1))


def module_filters(modules: Iterable[str]) -> list[str]:
    """The filters that match something here: ``self_attn``/``mlp`` and every projection name, in layer order."""
    modules = list(modules)
    kinds = [k for k in _MODULE_KINDS if any(k in m for m in modules)]
    def kind(module: str) -> int:
        return next((i for i, k in enumerate(_MODULE_KINDS) if k in module), len(_MODULE_KINDS))

    leaves = list(dict.fromkeys(m.rpartition(".")[2] for m in sorted(modules, key=lambda m: (kind(m), _module_order(m)))))
    return kinds + leaves


def layer_of(module: str) -> int | None:
    match = _LAYER_RE.search(module)
    return int(match.group(1)) if match else None


def _module_order(module: str):
    layer = layer_of(module)
    return (-1 if layer is None else layer, module)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value, what: str, coef_range: tuple[float, float]) -> float:
    if not _is_number(value) or not math.isfinite(value) or not coef_range[0] <= value <= coef_range[1]:
        raise CompositionError(f"{what} is {value!r}; expected a finite number in [{coef_range[0]:g}, {coef_range[1]:g}].")
    return float(value)


def _anchors(values, what: str, coef_range: tuple[float, float]) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)):
        raise CompositionError(f"{what} is {values!r}; expected a number or a list of anchors such as [0, 0.5, 1].")
    if not values:
        raise CompositionError(f"{what} is an empty list; give at least one anchor, e.g. [0, 0.5, 1].")
    out = []
    for i, v in enumerate(values):
        if not _is_number(v):
            raise CompositionError(f"{what}: anchor {i + 1} is {v!r}, not a number; anchors are numbers such as [0, 0.5, 1].")
        out.append(_number(v, f"{what}: anchor {i + 1}", coef_range))
    return tuple(out)
