"""``--model_args`` of the ``mcstudio`` model: what to compose, checked before anything loads.

lmms-eval splits ``--model_args`` on commas (``key=value,key=value``; JSON in braces keeps its commas)
and turns numbers and true/false into Python values. Here:

- ``experts``: expert folders (or folders of them), several joined with ``;`` (default: the bundled experts);
- ``variant``: one variant, as the studio names it: ``DAMC``, ``NaiveMC``, ``expert:<name>``, ``base``, a merge method;
- ``lambdas``: λ per expert, ``image:0.5;audio:0.5`` or JSON ``{"image":0.5}`` (default auto: 1/K);
- ``lambda_scale``: every auto λ becomes scale/K; ``mus``: μ per modality, as ``lambdas``;
- ``merge_all_experts``: compositions merge every expert's text delta (the original's merged model);
- ``base``: the base LLM (a folder, a .gguf or a hub id; default the offline SmolLM2-135M-Instruct);
- ``device`` and ``batch_size`` (items per batch, each a row of the engine's batch entry) come from lmms-eval's
  own ``--device`` and ``--batch_size``, which it passes to the class;
- ``prompt``: ``studio`` (the studio's modality lines, then the question), ``paper`` (the human turn verbatim, with
  the original's label lines; compositions merge every expert, as the original's merged model) or ``auto``
  (default: the verbatim turn when the context holds modality placeholders, as the ``mcub`` task's does).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from modalities.checks import check_int

from ...errors import CompositionError

PROMPTS = ("auto", "studio", "paper")


def parse_mapping(value, what: str) -> dict[str, float]:
    """``image:0.5;audio:0.5``, JSON ``{"image": 0.5}``, or a dict -> ``{"image": 0.5, ...}``."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                items = json.loads(text).items()
            except (ValueError, AttributeError):
                raise CompositionError(f"{what}={value!r} is not a JSON object; write it as {{\"image\": 0.5}} or "
                                       "image:0.5;audio:0.5.") from None
        else:
            items = []
            for part in text.replace("/", ";").split(";"):
                if not part.strip():
                    continue
                key, sep, raw = part.partition(":")
                if not sep:
                    key, sep, raw = part.partition("=")
                if not sep or not key.strip():
                    raise CompositionError(f"{what}: {part!r} is not NAME:VALUE (e.g. {what}=image:0.5;audio:0.5).")
                items.append((key.strip(), raw.strip()))
    else:
        raise CompositionError(f"{what}={value!r}; expected NAME:VALUE pairs joined with ';' (e.g. image:0.5;audio:0.5).")
    out = {}
    for key, raw in items:
        try:
            out[str(key)] = float(raw)
        except (TypeError, ValueError):
            raise CompositionError(f"{what}: the value of {key!r} is {raw!r}; expected a number.") from None
    return out


def _flag(value, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise CompositionError(f"{what}={value!r}; expected true or false.")


@dataclass(frozen=True)
class BridgeArgs:
    """The checked ``--model_args``."""

    experts: tuple[Path, ...] = ()
    variant: str = "DAMC"
    lambdas: dict = field(default_factory=dict)
    mus: dict = field(default_factory=dict)
    lambda_scale: float = 1.0
    merge_all_experts: bool = False
    base: str | None = None
    device: str | None = None
    batch_size: int = 8
    prompt: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.variant, str) or not self.variant.strip():
            raise CompositionError(f"variant={self.variant!r}; name one variant, e.g. variant=DAMC or variant=expert:image.")
        object.__setattr__(self, "batch_size", check_int(self.batch_size, "batch_size", 1, 4096, error=CompositionError))
        if self.prompt not in PROMPTS:
            raise CompositionError(f"prompt={self.prompt!r}; expected one of {PROMPTS}.")
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise CompositionError(f"device={self.device!r}; expected cpu or cuda.")
        for path in self.experts:
            if not Path(path).exists():
                raise CompositionError(f"experts: {path} does not exist; give expert folders (or folders of them), "
                                       "joined with ';'.")

    @classmethod
    def from_model_args(cls, **kwargs) -> "BridgeArgs":
        """From lmms-eval's parsed ``--model_args`` (plus its ``batch_size``/``device``); unknown keys are refused."""
        known = {"experts", "variant", "lambdas", "mus", "lambda_scale", "merge_all_experts", "base", "device", "batch_size",
                 "prompt", "max_batch_size"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise CompositionError(f"unknown model argument {unknown[0]!r} for mcstudio; expected some of "
                                   f"{', '.join(sorted(known - {'max_batch_size'}))}.")
        experts = kwargs.get("experts")
        paths = () if experts in (None, "", "bundled") else tuple(Path(p.strip()) for p in str(experts).split(";") if p.strip())
        scale = kwargs.get("lambda_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise CompositionError(f"lambda_scale={scale!r}; expected a number (auto λ = scale/K).")
        batch = kwargs.get("batch_size", 8)
        batch = 8 if batch in (None, "auto") else int(batch) if isinstance(batch, str) and batch.isdigit() else batch
        return cls(experts=paths, variant=str(kwargs.get("variant", "DAMC")), lambdas=parse_mapping(kwargs.get("lambdas"), "lambdas"),
                   mus=parse_mapping(kwargs.get("mus"), "mus"), lambda_scale=float(scale),
                   merge_all_experts=_flag(kwargs.get("merge_all_experts", False), "merge_all_experts"),
                   base=None if kwargs.get("base") in (None, "") else str(kwargs["base"]),
                   device=None if kwargs.get("device") in (None, "") else str(kwargs["device"]),
                   batch_size=batch, prompt=str(kwargs.get("prompt", "auto")))
