"""Export a composition as a plain transformers checkpoint plus what its modalities need.

The variant's text-route merge is written into the weights (materialized), so the folder
is an ordinary causal LM that any transformers user can load and chat with. Modality
tokens of the variant use other weights (DAMC: ``W + μ_i M_i``, not the text merge), so
each modality is saved as an expert in the standard format whose modality delta is the
*correction* from the merged weights (``route coefficients − text coefficients``) and whose
text delta is zero. Loading that base with those experts and running DAMC at default
coefficients reproduces the variant exactly (the text deltas are zero, μ = 1).

The adapter form (``form="adapter"``) writes the variant's merged text delta as a peft LoRA
adapter instead of a whole checkpoint: K experts of rank r merge into a delta of rank at most
K·r, so the factors side by side are exact (four of the paper's r=128 experts: rank 512, a few
hundred MB instead of 13.5 GB); asked for a smaller rank, each layer is truncated by SVD and
the card reports the energy kept. Both forms carry a model card (``README.md``, ``card.py``).

Layout::

    <folder>/config.json, model.safetensors, tokenizer files   plain checkpoint (form "full")
    <folder>/adapter_config.json, adapter_model.safetensors    peft adapter on the base (form "adapter")
    <folder>/README.md                                         model card (the Hub's front matter, the recipe)
    <folder>/composition.json                                  what was exported, how to reload
    <folder>/experts/<modality>/                               one expert folder per modality
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from modalities.checks import check_int

from .card import CardFacts, model_card
from .composer import ComposedModel
from .errors import CompositionError
from .expert import EncoderRef, Expert, ExpertConfig, save_expert
from .linalg import thin_svd
from .lora import LoraDelta, save_lora
from .routing import plain_state_dict
from .schedules import plain
from .variants import TEXT_ROUTE, Coefficients

EXPORT_FORMAT_VERSION = 1
CARD_FILE = "README.md"
COMPOSITION_JSON = "composition.json"
FORMS = ("full", "adapter")


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
                       modalities: set[str] | None = None, form: str = "full", rank: int | None = None,
                       recipe_yaml: str = "", mcub: dict | None = None) -> Path:
    """Write ``variant`` (over ``modalities``, default: every loaded expert's) into ``folder``.

    Args:
        form: ``"full"`` (a plain checkpoint, the text merge in the weights) or ``"adapter"`` (the text
            merge as a peft LoRA adapter on the base).
        rank: the adapter's rank (None: exact, the merged delta's largest rank); a layer that needs more
            is truncated by SVD, and the card says how much energy each kept.
        recipe_yaml: the composition config as YAML, for the card (``CompositionConfig.to_yaml``).
        mcub: this variant's MCUB result ``{"data", "items", "accuracy"}``, when one was measured.
    """
    from .base_llm import weights_sha256

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise CompositionError(f"export folder {folder.name!r} is not empty; choose a new folder.")
    if form not in FORMS:
        raise CompositionError(f"export form {form!r}; expected one of {', '.join(FORMS)}.")
    if rank is not None:
        rank = check_int(rank, "rank", 1, error=CompositionError)
    coefficients = coefficients or Coefficients()
    present = set(modalities) if modalities is not None else {e.modality for e in cm.experts.values()}
    adapter, kept = None, {}
    with cm.lock:
        rv = cm.resolve([variant], coefficients, present)[0]
        if form == "full":
            cm.materialize(variant, coefficients, present)
            try:
                state = {k: v.detach().clone() for k, v in plain_state_dict(cm.model).items()}
            finally:
                cm.dematerialize()
        else:
            adapter, kept = _text_adapter(cm, rv, rank)
        corrections = {}
        for modality in rv.block_experts:
            factors = {}
            for module, layer in cm.layers.items():
                # What the modality's tokens apply on top of the text merge, at this module (schedules included).
                route, text = rv.route_at(modality, layer.position), rv.route_at(TEXT_ROUTE, layer.position)
                diff = {s: route.get(s, 0.0) - text.get(s, 0.0) for s in set(route) | set(text)}
                f = _correction_factors(cm, module, diff)
                if f is not None:
                    factors[module] = f
            corrections[modality] = factors

    folder.mkdir(parents=True, exist_ok=True)
    if form == "full":
        exported_sha = weights_sha256(state)  # before saving: save_pretrained consumes the dict
        cm.model.save_pretrained(folder, state_dict=state)
        cm.base.tokenizer.save_pretrained(folder)
    else:
        exported_sha = getattr(cm.base, "sha256", None)  # the modality parts sit on the base plus this adapter
        save_lora(adapter, folder, base_model_name=getattr(cm.base, "hub_id", None) or cm.base.name)
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
        "form": form,
        "variant": rv.name,
        "coefficients": {"lambdas": {k: plain(v) for k, v in coefficients.lambdas.items()},
                         "mus": {k: plain(v) for k, v in coefficients.mus.items()}},
        "modalities": sorted(names),
        "experts": {m: f"experts/{m}" for m in sorted(names)},
        "template": getattr(cm.base.template, "name", None),
        "base": {"name": cm.base.name, "sha256": getattr(cm.base, "sha256", None)},
        "weights_sha256": exported_sha,
        "reload": "composition.export.load_exported(folder), then compare with variant 'DAMC' at default coefficients",
    }
    if form == "adapter":
        manifest.update({"adapter_rank": adapter.r, "kept_energy": kept,
                         "base": {**manifest["base"], "hub_id": getattr(cm.base, "hub_id", None)}})
    (folder / COMPOSITION_JSON).write_text(json.dumps(manifest, indent=2) + "\n")
    card = CardFacts(name=folder.name, variant=rv.name, kind=rv.kind.value, method=rv.spec.method, form=form,
                     base_name=cm.base.name, base_hub_id=getattr(cm.base, "hub_id", None),
                     expert_sources=[e.config.source for e in rv.block_experts.values()],
                     coefficients=rv.coefficients_json(), recipe_yaml=recipe_yaml, modalities=sorted(names),
                     adapter_rank=adapter.r if adapter is not None else None, kept_energy=kept, mcub=mcub)
    model_card(card).save(folder / CARD_FILE)
    return folder


def _text_adapter(cm: ComposedModel, rv, rank: int | None) -> tuple[LoraDelta, dict[str, float]]:
    """The text route's merged delta as one LoRA delta of uniform rank, and per truncated layer the energy kept.

    Every layer's delta is exact as the experts' factors side by side (a dense merge result by SVD at
    its numerical rank); a layer whose rank exceeds ``rank`` keeps its ``rank`` largest singular
    directions, computed on the small core (QR of both factors), never on the full matrix.
    """
    factors, kept = {}, {}
    for module, layer in cm.layers.items():
        f = _correction_factors(cm, module, rv.route_at(TEXT_ROUTE, layer.position))
        if f is None:
            continue
        a, b = f
        if rank is not None and a.shape[0] > rank:
            (a, b), kept[module] = _truncate(a, b, rank)
        factors[module] = (a, b)
    if not factors:
        raise CompositionError("the variant's text merge changes no layer (every coefficient is 0): there is no "
                               "adapter to write; export the base instead.")
    # Uniform rank (peft's r): the largest layer's; smaller ones padded with zeros, which changes nothing.
    return _padded_delta(factors, {m: cm.linear_shapes[m] for m in factors}), kept


def _truncate(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
    """The best rank-``rank`` factors of ``b @ a`` and the share of its energy (Σσ²) they keep."""
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    u, sv, vh = thin_svd(rb @ ra.T)
    total = float((sv ** 2).sum())
    root = sv[:rank].sqrt()
    new_b = (qb @ u[:, :rank]) * root[None, :]
    new_a = root[:, None] * (vh[:rank] @ qa.T)
    return (new_a.float(), new_b.float()), (float((sv[:rank] ** 2).sum()) / total if total > 0 else 1.0)


def load_exported(folder: Path, *, feature_fn=None, device: str = "cpu", base: str | None = None) -> tuple[ComposedModel, str]:
    """Reload an exported composition; returns the model and the variant name that reproduces it ('DAMC').

    ``base``: for the adapter form, the base it was made on (default: the manifest's hub id, else the
    offline default); the adapter is added into its weights.
    """
    from .base_llm import ONLINE_DEFAULT, load_base_llm
    from .lora import check_against_base, load_lora, read_json

    folder = Path(folder)
    manifest = read_json(folder / COMPOSITION_JSON, f"export folder {folder.name!r}")
    if manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        raise CompositionError(f"export folder {folder.name!r} has format_version {manifest.get('format_version')!r}; "
                               f"this version reads {EXPORT_FORMAT_VERSION}.")
    modalities = manifest.get("modalities")
    if not isinstance(modalities, list) or not modalities:
        raise CompositionError(f"export folder {folder.name!r}: composition.json lists no modalities; it is not a complete export.")
    if manifest.get("form", "full") == "full":
        loaded = load_base_llm(str(folder), device=device, template=manifest.get("template"))
    else:
        source = base or (manifest.get("base") or {}).get("hub_id")
        loaded = load_base_llm(None if source == ONLINE_DEFAULT else source, device=device, template=manifest.get("template"))
        delta = load_lora(folder, what=f"export folder {folder.name!r}")
        check_against_base(delta, {n: tuple(m.weight.shape) for n, m in loaded.model.named_modules()
                                   if isinstance(m, torch.nn.Linear)}, what=f"export folder {folder.name!r}")
        with torch.no_grad():
            for module in delta.modules:
                weight = loaded.model.get_submodule(module).weight
                weight += delta.dense(module).to(weight.device, weight.dtype)
        loaded._sha256 = manifest.get("weights_sha256")  # the modality parts were made for this base plus the adapter
    cm = ComposedModel(loaded, feature_fn=feature_fn)
    for modality in modalities:
        cm.load_expert(folder / "experts" / modality)
    return cm, "DAMC"
