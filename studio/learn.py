"""The Learn tab: what NaiveMC and DAMC compute with the current coefficients, and which
deltas each prompt token goes through."""
from __future__ import annotations

import html
from typing import Sequence

from composition.composer import ComposedModel
from composition.config import CompositionConfig
from composition.inputs import ModalInput
from composition.errors import CompositionError
from composition.prompt import placeholder_pattern, tokenize_segments
from composition.schedules import Schedule
from composition.variants import DAMC, NAIVE, TEXT_ROUTE


ROUTE_COLOURS = {"text": "#e0e7ff", "image": "#fde68a", "audio": "#bbf7d0", "video": "#fbcfe8", "point": "#bae6fd"}


def _term(coef, symbol: str) -> str:
    """``0.5 T_image``; a coefficient scheduled over layers is ``λ(ℓ) T_image`` (its values are listed below the formula)."""
    if isinstance(coef, Schedule):
        return f"\\lambda(\\ell)\\,{symbol}"
    return f"{coef:.3g}\\,{symbol}"


def _schedules(coefficients: dict, symbol: str) -> list[str]:
    """One line per coefficient that varies by layer or module: what it is."""
    return [f"- {symbol} for **{name}** over the layers ℓ: {value.describe()}" for name, value in coefficients.items()
            if isinstance(value, Schedule)]


def _sub(name: str) -> str:
    return "\\text{" + name.replace("_", "\\_") + "}"


def formulas_markdown(studio, settings: CompositionConfig, present: set[str] = frozenset()) -> str:
    """Markdown with $$…$$ formulas, filled in with the coefficients the engine's plan applies for these inputs."""
    experts = settings.selection(studio.cm.experts)
    try:
        plan = settings.plan(studio.cm, set(present)) if experts else None
    except CompositionError:
        plan = None  # the compare button says why; the formulas still show their general form
    naive = plan.variant(NAIVE) if plan else None
    damc = plan.variant(DAMC) if plan else None
    out = ["### NaiveMC — merge the shared deltas",
           "Every token (text and modality) goes through the same weights, the **exact mean of the deltas** "
           "(not the mean of the LoRA factors, which would add cross terms):"]
    if naive is not None:
        terms = " + ".join(_term(v, f"D_{{{_sub(n)}}}") for n, v in naive.lambdas.items())
        out.append(f"$$W_{{\\text{{NaiveMC}}}} = W + {terms}$$")
        out += _schedules(naive.lambdas, "λ")
    else:
        out.append("$$W + \\tfrac{1}{K}\\sum_i D_i$$  *(no shared expert takes part)*")
    out += ["### DAMC — decoupled text and modality deltas",
            "Text tokens (the question and every generated token) use the λ-weighted text deltas; tokens of "
            "modality $m_i$ use only that expert's modality delta, scaled by μ:"]
    if damc is not None:
        text = " + ".join(_term(v, f"T_{{{_sub(n)}}}") for n, v in damc.lambdas.items())
        out.append(f"$$W_{{\\text{{text}}}} = W + {text}$$")
        out += _schedules(damc.lambdas, "λ")
        for modality, expert in damc.block_experts.items():
            out.append(f"$$W_{{{_sub(modality)}}} = W + {_term(damc.mus[modality], f'M_{{{_sub(expert.name)}}}')}$$")
        out += _schedules(damc.mus, "μ")
        out.append("These are the values the current inputs use: λ left at its default is $1/K$ over the "
                   f"experts that **get an input** (here K = {len(damc.lambdas)}).")
    else:
        out.append("$$W_{\\text{text}} = W + \\sum_i \\lambda_i T_i, \\qquad W_{m_i} = W + \\mu_i M_i$$  "
                   "*(no decoupled expert takes part)*")
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


def route_formula(routes: dict[int, float], names: dict[int, str], per_module: dict | None = None) -> str:
    """``W + 0.5·T[image] + ...``; a coefficient that varies by layer shows its mean, marked ``(mean over layers)``."""
    per_module = per_module or {}
    terms = [f"{c:.3g}{'ᵐ' if s in per_module else ''}·{names.get(s, f'slot {s}')}" for s, c in routes.items() if c]
    note = " (ᵐ: mean over layers and modules)" if any(s in per_module for s in routes) else ""
    return ("W + " + " + ".join(terms) if terms else "W (no delta)") + note


def routing_html(studio, question: str, inputs: Sequence[ModalInput], variant: str, settings: CompositionConfig) -> str:
    """Coloured spans: each text token (hover: its weights) and one span per modality block."""
    view = studio.cm
    present = {i.modality for i in inputs}
    rv = settings.replace(variants=[variant]).plan(view, present).variants[0]
    view.prepare_dense([rv])
    row = view.prompt_rows(question, inputs, [rv])[0]
    names = _slot_names(view)
    tokenizer = view.base.tokenizer
    pieces = placeholder_pattern().split(row.text)
    segments = pieces[0::2]
    ids = tokenize_segments(tokenizer, segments)
    spans, pos = [], 0
    text_title = html.escape(route_formula(rv.routes.get(TEXT_ROUTE, {}), names, rv.module_routes.get(TEXT_ROUTE)))
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
            formula = html.escape(route_formula(rv.routes.get(modality, {}), names, rv.module_routes.get(modality)))
            spans.append(f'<span class="mc-tok" style="background:{ROUTE_COLOURS.get(modality, "#eee")};font-weight:600" '
                         f'title="{modality} → {formula}">[{modality} block: {n} tokens → {formula}]</span>')
            pos += n
    legend = "".join(f'<span style="background:{ROUTE_COLOURS.get(r, "#eee")}">{r}: {html.escape(route_formula(rv.routes.get(r, {}), names, rv.module_routes.get(r)))}</span>'
                     for r in (TEXT_ROUTE, *[m for m in ROUTE_COLOURS if m in rv.block_experts]))
    return (f'<div class="mc-legend"><b>{html.escape(rv.name)}</b> · {len(row.routes)} prompt tokens · {legend}</div>'
            f'<div style="margin-top:10px;font-family:monospace">{"".join(spans)}</div>'
            '<p style="color:var(--body-text-color-subdued)">Generated tokens are text tokens: they use the text weights. '
            'Hover a token to see its weights.</p>')
