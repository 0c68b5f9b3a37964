"""The Learn tab: what NaiveMC and DAMC compute with the current coefficients, and which
deltas each prompt token goes through."""
from __future__ import annotations

import html
from typing import Sequence

from composition.composer import ComposedModel, ModalInput
from composition.prompt import placeholder_pattern, tokenize_segments
from composition.variants import TEXT_ROUTE, VariantSpec

from .settings import StudioSettings, text_merge_experts

ROUTE_COLOURS = {"text": "#e0e7ff", "image": "#fde68a", "audio": "#bbf7d0", "video": "#fbcfe8", "point": "#bae6fd"}


def _term(coef: float, symbol: str) -> str:
    return f"{coef:.3g}\\,{symbol}"


def _sub(name: str) -> str:
    return "\\text{" + name.replace("_", "\\_") + "}"


def formulas_markdown(view: ComposedModel, settings: StudioSettings) -> str:
    """Markdown with $$…$$ formulas, coefficients filled in from the settings."""
    experts = view.experts
    shared = [e for e in experts.values() if e.training == "shared"]
    decoupled = [e for e in experts.values() if e.training == "decoupled"]
    out = ["### NaiveMC — merge the shared deltas",
           "Every token (text and modality) goes through the same weights, the **exact mean of the deltas** "
           "(not the mean of the LoRA factors, which would add cross terms):"]
    if shared:
        k = len(shared)
        terms = " + ".join(_term(1 / k, f"D_{{{_sub(e.name)}}}") for e in shared)
        out.append(f"$$W_{{\\text{{NaiveMC}}}} = W + {terms}$$")
    else:
        out.append("$$W + \\tfrac{1}{K}\\sum_i D_i$$  *(no shared expert is selected)*")
    out += ["### DAMC — decoupled text and modality deltas",
            "Text tokens (the question and every generated token) use the λ-weighted text deltas; tokens of "
            "modality $m_i$ use only that expert's modality delta, scaled by μ:"]
    if decoupled:
        names = text_merge_experts(experts, settings.selected)
        lambdas = settings.coefficients(experts).lambdas
        k = len(names)
        text = " + ".join(_term(lambdas.get(n, 1 / k), f"T_{{{_sub(n)}}}") for n in names)
        out.append(f"$$W_{{\\text{{text}}}} = W + {text}$$")
        for e in decoupled:
            mu = settings.mus.get(e.modality, 1.0)
            out.append(f"$$W_{{{_sub(e.modality)}}} = W + {_term(mu, f'M_{{{_sub(e.name)}}}')}$$")
        out.append("λ left at the default means $1/K$ over the experts that **get an input** in a request.")
    else:
        out.append("$$W_{\\text{text}} = W + \\sum_i \\lambda_i T_i, \\qquad W_{m_i} = W + \\mu_i M_i$$  *(no decoupled expert is selected)*")
    if settings.methods:
        out.append("### Extra merge methods")
        for m in settings.methods:
            params = ", ".join(f"{k}={v:g}" for k, v in settings.hyper(m).items()) or "no hyper-parameters"
            out.append(f"- **{m}** ({params}) replaces $\\sum_i \\lambda_i T_i$ on text tokens; modality tokens stay as in DAMC.")
    return "\n\n".join(out)


def _slot_names(view: ComposedModel) -> dict[int, str]:
    symbols = {"shared": "D", "text": "T", "modality": "M"}
    return {slot: (f"{symbols.get(delta, delta)}[{expert}]" if expert != "dense" else "merged ΔW")
            for (expert, delta), slot in view.slots.index.items()}


def route_formula(routes: dict[int, float], names: dict[int, str]) -> str:
    terms = [f"{c:.3g}·{names.get(s, f'slot {s}')}" for s, c in routes.items() if c]
    return "W + " + " + ".join(terms) if terms else "W (no delta)"


def routing_html(view: ComposedModel, question: str, inputs: Sequence[ModalInput], variant: str,
                 settings: StudioSettings) -> str:
    """Coloured spans: each text token (hover: its weights) and one span per modality block."""
    spec = VariantSpec.parse(variant, settings.hyper(variant) if variant not in ("NaiveMC", "DAMC") and not variant.startswith("expert:") else None)
    rv = view.resolve([spec], settings.coefficients(view.experts), {i.modality for i in inputs})[0]
    row = view.prompt_rows(question, inputs, [rv])[0]
    names = _slot_names(view)
    tokenizer = view.base.tokenizer
    pieces = placeholder_pattern().split(row.text)
    segments = pieces[0::2]
    ids = tokenize_segments(tokenizer, segments)
    spans, pos = [], 0
    text_title = html.escape(route_formula(rv.routes.get(TEXT_ROUTE, {}), names))
    for i, seg_ids in enumerate(ids):
        for tid in seg_ids:
            tok = tokenizer.decode([tid])
            shown = html.escape(tok).replace("\n", "↵<br>")
            spans.append(f'<span class="mc-tok" style="background:{ROUTE_COLOURS["text"]}" title="text → {text_title}">{shown or "·"}</span>')
            pos += 1
        if i < len(pieces[1::2]):
            modality = row.routes[pos]
            n = 0
            while pos + n < len(row.routes) and row.routes[pos + n] == modality:
                n += 1
            formula = html.escape(route_formula(rv.routes.get(modality, {}), names))
            spans.append(f'<span class="mc-tok" style="background:{ROUTE_COLOURS.get(modality, "#eee")};font-weight:600" '
                         f'title="{modality} → {formula}">[{modality} block: {n} tokens → {formula}]</span>')
            pos += n
    legend = "".join(f'<span style="background:{ROUTE_COLOURS.get(r, "#eee")}">{r}: {html.escape(route_formula(rv.routes.get(r, {}), names))}</span>'
                     for r in (TEXT_ROUTE, *[m for m in ROUTE_COLOURS if m in rv.block_experts]))
    return (f'<div class="mc-legend"><b>{html.escape(rv.name)}</b> · {len(row.routes)} prompt tokens · {legend}</div>'
            f'<div style="margin-top:10px;font-family:monospace">{"".join(spans)}</div>'
            '<p style="color:var(--body-text-color-subdued)">Generated tokens are text tokens: they use the text weights. '
            'Hover a token to see its weights.</p>')
