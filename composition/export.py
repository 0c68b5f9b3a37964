"""Export a composition as a plain transformers checkpoint plus what its modalities need.

The variant's text-route merge is written into the weights (materialized), so the folder
is an ordinary causal LM that any transformers user can load and chat with. Modality
tokens of the variant use other weights (DAMC: ``W + μ_i M_i``, not the text merge), so
each modality is saved as an expert in the standard format whose modality delta is the
*correction* from the merged weights (``route coefficients − text coefficients``) and whose
text delta is zero. Loading that base with those experts and running DAMC at default
coefficients reproduces the variant exactly (the text deltas are zero, μ = 1).

Layout::

    <folder>/config.json, model.safetensors, tokenizer files   plain checkpoint
    <folder>/composition.json                                  what was exported, how to reload
    <folder>/experts/<modality>/                               one expert folder per modality
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .composer import ComposedModel
from .errors import CompositionError
from .expert import EncoderRef, Expert, ExpertConfig, save_expert
from .linalg import thin_svd
from .lora import LoraDelta
from .routing import plain_state_dict
from .variants import TEXT_ROUTE, Coefficients

EXPORT_FORMAT_VERSION = 1
COMPOSITION_JSON = "composition.json"


def _correction_factors(cm: ComposedModel, module: str, correction: dict[int, float]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Low-rank factors (A, B) of ``Σ c_slot ΔW_slot`` for one layer, exact.

    Low-rank slots are concatenated; a dense slot (non-linear merge) makes the whole
    correction dense, factored exactly by SVD at its numerical rank.
    """
    layer = cm.layers[module]
    used = {s: c for s, c in correction.items() if c != 0.0 and (s in layer.lowrank or s in layer.dense)}
    if not used:
        return None
    if all(s in layer.lowrank for s in used):
        a = torch.cat([layer.lowrank[s].A.float() for s in used], dim=0)
        b = torch.cat([c * layer.lowrank[s].B_scaled.float() for s, c in used.items()], dim=1)
        return a, b
    dense = sum(c * layer.slot_delta(s).double() for s, c in used.items())
    u, sv, vh = thin_svd(dense)
    rank = max(1, int((sv > sv[0] * 1e-7).sum()))
    root = sv[:rank].sqrt()
    return (root[:, None] * vh[:rank]).float(), (u[:, :rank] * root[None, :]).float()


def _padded_delta(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], shapes: dict[str, tuple[int, int]]) -> LoraDelta:
    """One LoraDelta of uniform rank (peft's ``r``), zero-padding layers of smaller rank."""
    r = max([a.shape[0] for a, _ in factors.values()] or [1])
    a_all, b_all = {}, {}
    for module, (out_f, in_f) in shapes.items():
        a = torch.zeros(r, in_f)
        b = torch.zeros(out_f, r)
        if module in factors:
            fa, fb = factors[module]
            a[: fa.shape[0]] = fa
            b[:, : fb.shape[1]] = fb
        a_all[module], b_all[module] = a, b
    return LoraDelta(r, float(r), a_all, b_all)  # alpha = r: scale 1, the factors carry everything


def export_composition(cm: ComposedModel, variant: str, folder: Path, *, coefficients: Coefficients | None = None,
                       modalities: set[str] | None = None) -> Path:
    """Write ``variant`` (over ``modalities``, default: every loaded expert's) into ``folder``."""
    from .base_llm import weights_sha256

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise CompositionError(f"export folder {folder.name!r} is not empty; choose a new folder.")
    coefficients = coefficients or Coefficients()
    present = set(modalities) if modalities is not None else {e.modality for e in cm.experts.values()}
    with cm.lock:
        rv = cm.resolve([variant], coefficients, present)[0]
        cm.materialize(variant, coefficients, present)
        try:
            state = {k: v.detach().clone() for k, v in plain_state_dict(cm.model).items()}
        finally:
            cm.dematerialize()
        text = rv.routes[TEXT_ROUTE]
        corrections = {}
        for modality in rv.block_experts:
            route = rv.routes.get(modality, {})
            diff = {s: route.get(s, 0.0) - text.get(s, 0.0) for s in set(route) | set(text)}
            factors = {}
            for module in cm.layers:
                f = _correction_factors(cm, module, diff)
                if f is not None:
                    factors[module] = f
            corrections[modality] = factors

    exported_sha = weights_sha256(state)  # before saving: save_pretrained consumes the dict
    folder.mkdir(parents=True, exist_ok=True)
    cm.model.save_pretrained(folder, state_dict=state)
    cm.base.tokenizer.save_pretrained(folder)
    shapes = cm.linear_shapes
    names = {}
    for modality, factors in corrections.items():
        source = rv.block_experts[modality]
        config = ExpertConfig(
            name=f"{rv.name.replace(':', '-')}-{modality}", modality=modality, training="decoupled",
            base_model_name=f"{cm.base.name} + {rv.name}", base_model_sha256=exported_sha,
            encoder=EncoderRef(**vars(source.config.encoder)), projector=source.config.projector,
            prefix_tokens=source.config.prefix_tokens, suffix_tokens=source.config.suffix_tokens,
            description=f"modality part of the exported composition {rv.name!r} (from expert {source.name!r})",
        )
        deltas = {"text": LoraDelta.zeros_like_modules(shapes, 1, 1.0), "modality": _padded_delta(factors, shapes)}
        expert = Expert(config, deltas, source.projector, source.prefix, source.suffix, dict(source.encoder_state))
        save_expert(expert, folder / "experts" / modality)
        names[modality] = config.name
    manifest = {
        "format_version": EXPORT_FORMAT_VERSION,
        "variant": rv.name,
        "coefficients": {"lambdas": dict(coefficients.lambdas), "mus": dict(coefficients.mus)},
        "modalities": sorted(names),
        "experts": {m: f"experts/{m}" for m in sorted(names)},
        "template": getattr(cm.base.template, "name", None),
        "base": {"name": cm.base.name, "sha256": getattr(cm.base, "sha256", None)},
        "weights_sha256": exported_sha,
        "reload": "composition.export.load_exported(folder), then compare with variant 'DAMC' at default coefficients",
    }
    (folder / COMPOSITION_JSON).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def load_exported(folder: Path, *, feature_fn=None, device: str = "cpu") -> tuple[ComposedModel, str]:
    """Reload an exported composition; returns the model and the variant name that reproduces it ('DAMC')."""
    from .base_llm import load_base_llm
    from .lora import read_json

    folder = Path(folder)
    manifest = read_json(folder / COMPOSITION_JSON, f"export folder {folder.name!r}")
    if manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        raise CompositionError(f"export folder {folder.name!r} has format_version {manifest.get('format_version')!r}; "
                               f"this version reads {EXPORT_FORMAT_VERSION}.")
    modalities = manifest.get("modalities")
    if not isinstance(modalities, list) or not modalities:
        raise CompositionError(f"export folder {folder.name!r}: composition.json lists no modalities; it is not a complete export.")
    base = load_base_llm(str(folder), device=device, template=manifest.get("template"))
    cm = ComposedModel(base, feature_fn=feature_fn)
    for modality in modalities:
        cm.load_expert(folder / "experts" / modality)
    return cm, "DAMC"
