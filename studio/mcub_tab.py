"""The Benchmark tab (MCUB accuracy; the speed figures are `python -m composition bench`): accuracy by variant, a DAMC sweep.

Both run ``composition.mcub.evaluate`` on the per-request model view; ``progress`` is any
``callable(fraction, desc)`` (the app passes gr.Progress).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from composition.errors import CompositionError
from composition.mcub import McubResult, evaluate, load_mcub
from composition.variants import Coefficients, VariantSpec

from .session import Studio
from .cards import KIND_COLOURS
from .run import plan_request
from .settings import StudioSettings, lambda_names

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MCUB = REPO / "examples" / "manifest.json"
SOURCES = ("bundled examples", "generated MCUB-synth-4", "uploaded MCUB json")
Progress = Callable[..., None]


def bundled_mcub_path() -> Path:
    import json

    manifest = json.loads(BUNDLED_MCUB.read_text())
    return BUNDLED_MCUB.parent / manifest["mcub_json"]


def load_items(source: str, uploaded: str | None, n_items: int, progress: Progress | None = None) -> list:
    """The items to evaluate, the first ``n_items`` of the chosen source."""
    if not isinstance(n_items, (int, float)) or n_items < 1:
        raise CompositionError(f"items={n_items!r}; expected at least 1.")
    n_items = int(n_items)
    if source == SOURCES[0]:
        path = bundled_mcub_path()
    elif source == SOURCES[1]:
        from composition.mcub import synth_sets

        if progress:
            progress(0.0, desc=f"building MCUB-synth-4 ({n_items} items) — rendering takes a while the first time")
        path = synth_sets("synth-4", n_items=n_items)["image+audio+video+point"]
    elif source == SOURCES[2]:
        if not uploaded:
            raise CompositionError("choose 'uploaded MCUB json' only after uploading an MCUB .json file (its media paths "
                                   "are relative to the json, so keep them next to it on the server).")
        path = Path(uploaded)
    else:
        raise CompositionError(f"unknown benchmark source {source!r}; expected one of {SOURCES}.")
    return load_mcub(path)[:n_items]


def _evaluate(studio: Studio, settings: StudioSettings, items: list, variants, coefficients, progress: Progress | None,
              label: str) -> McubResult:
    view = studio.cm.subset(settings.selected)

    def report(done: int, total: int) -> None:
        if progress:
            progress(done / total, desc=f"{label}: {done}/{total} items")

    config = settings.generation()
    from composition.generate import GenerationConfig

    config = GenerationConfig(max_new_tokens=min(config.max_new_tokens, 4))  # only the first letter counts
    return evaluate(view, items, variants, coefficients, config, batch_items=4, progress=report)


def run_mcub(studio: Studio, settings: StudioSettings, items: list, progress: Progress | None = None):
    """(plotly bar chart, markdown summary, result JSON) of accuracy by variant."""
    present = {m for item in items for m in item.modalities}
    plan = plan_request(studio, settings, present)
    result = _evaluate(studio, settings, items, plan.specs, settings.coefficients(studio.cm.experts, present), progress,
                       "benchmark")
    acc = result.accuracy()
    summary = (f"**{result.n_items} items**, {len(acc)} variants in {result.seconds:.1f} s "
               f"({result.items_per_second:.2f} items/s). Chance is 25 %." +
               "".join(f"\n- skipped {n}: {why}" for n, why in plan.skipped.items()))
    return accuracy_chart(acc, result.n_items), summary, result.to_json()


def accuracy_chart(acc: dict[str, float], n_items: int):
    import plotly.graph_objects as go

    names = list(acc)
    colours = [KIND_COLOURS[VariantSpec.parse(n).kind.value] for n in names]
    fig = go.Figure(go.Bar(x=names, y=[100 * acc[n] for n in names], text=[f"{100 * acc[n]:.0f} %" for n in names],
                           textposition="outside", marker_color=colours))
    fig.add_hline(y=25, line_dash="dot", annotation_text="chance (25 %)")
    fig.update_layout(title=f"MCUB accuracy by variant ({n_items} items)", yaxis_title="accuracy (%)",
                      yaxis_range=[0, 110], height=380, margin={"l": 50, "r": 20, "t": 50, "b": 60})
    return fig


def run_sweep(studio: Studio, settings: StudioSettings, items: list, scales: list[float], mus: list[float],
              progress: Progress | None = None):
    """DAMC accuracy over λ scale (λ_i = scale/K) × μ (same μ for every modality): a heat map."""
    import plotly.graph_objects as go

    if len(scales) * len(mus) > 36:
        raise CompositionError(f"the sweep grid has {len(scales)}×{len(mus)} cells; keep it at most 36 (each cell runs every item).")
    view = studio.cm.subset(settings.selected)
    names = lambda_names(view.experts, settings.selected)
    if not any(view.experts[n].training == "decoupled" for n in names):
        raise CompositionError("the sweep varies DAMC's λ and μ, which needs decoupled experts; select some in the Experts tab.")
    modalities = sorted({view.experts[n].modality for n in names})
    z = []
    cells, done = len(scales) * len(mus), 0
    for mu in mus:
        row = []
        for scale in scales:
            coef = Coefficients({n: scale / len(names) for n in names}, {m: mu for m in modalities})
            label = f"sweep cell {done + 1}/{cells} (λ scale {scale:g}, μ {mu:g})"
            result = _evaluate(studio, settings, items, [VariantSpec.parse("DAMC")], coef, None, label)
            row.append(100 * result.accuracy()["DAMC"])
            done += 1
            if progress:
                progress(done / cells, desc=label)
        z.append(row)
    fig = go.Figure(go.Heatmap(z=z, x=[f"{s:g}" for s in scales], y=[f"{m:g}" for m in mus], colorscale="Viridis",
                               zmin=0, zmax=100, text=[[f"{v:.0f}%" for v in r] for r in z], texttemplate="%{text}",
                               colorbar={"title": "acc %"}))
    fig.update_layout(title=f"DAMC accuracy on {len(items)} items: λ_i = scale/K, μ for every modality",
                      xaxis_title="λ scale (1 = the paper's 1/K)", yaxis_title="μ", height=420,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def parse_grid(text: str, what: str) -> list[float]:
    """'0.5, 1, 1.5' -> [0.5, 1.0, 1.5] with a clear error."""
    try:
        values = [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise CompositionError(f"{what} {text!r} must be numbers separated by commas, e.g. 0.5, 1, 1.5.") from None
    if not values:
        raise CompositionError(f"{what} is empty; give numbers separated by commas, e.g. 0.5, 1, 1.5.")
    return values
