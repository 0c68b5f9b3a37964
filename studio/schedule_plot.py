"""The small plot in each expert's "advanced" box: its λ over the layers, as the engine applies it."""
from __future__ import annotations

from composition.schedules import layer_of
from composition.variants import TEXT_ROUTE, ResolvedVariant

KINDS = (("self_attn", "attention"), ("mlp", "MLP"))


def coefficient_curve(cm, rv: ResolvedVariant, expert: str):
    """``expert``'s text-route coefficient in ``rv`` per layer, for the attention and the MLP modules
    (the first routed module of each kind in each layer): a DataFrame (layer, λ, modules), or None when
    the expert does not take part in ``rv``."""
    import pandas as pd

    used = set(rv.routes.get(TEXT_ROUTE, {})) | set(rv.module_routes.get(TEXT_ROUTE, {}))
    slot = next((cm.slots.index[k] for k in ((expert, "text"), (expert, "shared")) if cm.slots.index.get(k) in used), None)
    if slot is None:
        return None
    rows, seen = [], set()
    for module in cm.layout.modules:
        layer = layer_of(module)
        kind = next((label for key, label in KINDS if key in module), None)
        if layer is None or kind is None or (layer, kind) in seen:
            continue
        seen.add((layer, kind))
        rows.append({"layer": layer, "λ": rv.route_at(TEXT_ROUTE, cm.layers[module].position).get(slot, 0.0),
                     "modules": kind})
    return pd.DataFrame(rows, columns=["layer", "λ", "modules"])


def lambda_curves(cm, plan, slots) -> list:
    """Per λ slider (``slots``: expert name or None), its curve in the composition that merges its text delta
    (DAMC, else NaiveMC, else the first composition it takes part in); None where there is none."""
    compositions = [v for v in plan.variants if v.kind.composes] if plan is not None else []
    order = sorted(compositions, key=lambda v: (v.kind.value != "damc", v.kind.value != "naive"))
    out = []
    for name in slots:
        rv = next((v for v in order if name in v.experts), None) if name else None
        out.append(coefficient_curve(cm, rv, name) if rv is not None else None)
    return out
