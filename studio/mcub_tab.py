"""The Benchmark tab (MCUB accuracy; the speed figures are `python -m composition bench`): accuracy by variant, a DAMC sweep.

Both run ``composition.evaluation.evaluate`` on the per-request model view; ``progress`` is any
``callable(fraction, desc)`` (the app passes gr.Progress).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from composition.config import CompositionConfig
from composition.errors import CompositionError
from composition.evaluation import ALL_FOUR, RULES, McubResult, evaluate, load_mcub, synth_sets
from composition.evaluation.tune import parse_grid, split_items, tune_coefficients  # noqa: F401 (parse_grid: the app's grids)
from composition.variants import Coefficients, VariantSpec

from .session import Studio
from .cards import KIND_COLOURS
from .controls import lambda_names

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MCUB = REPO / "examples" / "manifest.json"
SOURCES = ("bundled examples", "built MCUB-synth-4", "uploaded MCUB json")
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
    elif source == SOURCES[1]:  # built by training (python -m training.mcub_synth); a missing set names the command
        path = synth_sets("synth-4", n_items=n_items, at_least=True)[ALL_FOUR]
    elif source == SOURCES[2]:
        if not uploaded:
            raise CompositionError("choose 'uploaded MCUB json' only after uploading an MCUB .json file (its media paths "
                                   "are relative to the json, so keep them next to it on the server).")
        path = Path(uploaded)
    else:
        raise CompositionError(f"unknown benchmark source {source!r}; expected one of {SOURCES}.")
    return load_mcub(path)[:n_items]


def _evaluate(studio: Studio, settings: CompositionConfig, items: list, variants, coefficients, progress: Progress | None,
              label: str) -> McubResult:
    view = studio.cm.subset(settings.experts)

    def report(done: int, total: int) -> None:
        if progress:
            progress(done / total, desc=f"{label}: {done}/{total} items")

    config = settings.generation()
    from composition.generate import GenerationConfig

    config = GenerationConfig(max_new_tokens=min(config.max_new_tokens, 4))  # only the first letter counts
    return evaluate(view, items, variants, coefficients, config, batch_items=4, progress=report)


def run_mcub(studio: Studio, settings: CompositionConfig, items: list, progress: Progress | None = None):
    """(plotly bar chart, markdown summary, result JSON) of accuracy by variant."""
    present = {m for item in items for m in item.modalities}
    plan = settings.plan(studio.cm, present)
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


def run_sweep(studio: Studio, settings: CompositionConfig, items: list, scales: list[float], mus: list[float],
              progress: Progress | None = None):
    """DAMC accuracy over λ scale (λ_i = scale/K) × μ (same μ for every modality): a heat map."""
    import plotly.graph_objects as go

    if len(scales) * len(mus) > 36:
        raise CompositionError(f"the sweep grid has {len(scales)}×{len(mus)} cells; keep it at most 36 (each cell runs every item).")
    view = studio.cm.subset(settings.experts)
    names = lambda_names(view.experts, settings.experts)
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




def tune_items(source: str, uploaded: str | None, n_items: int, fraction: float = 0.3) -> tuple[list, list]:
    """(validation, test) items: MCUB-synth-4 from two seeds (1 to tune, 0 to report); other sources a seeded split."""
    if source == SOURCES[1]:
        validation = load_mcub(synth_sets("synth-4", seed=1, n_items=int(n_items), at_least=True)[ALL_FOUR])[:int(n_items)]
        return validation, load_items(source, uploaded, n_items)
    return split_items(load_items(source, uploaded, n_items), fraction)


def run_tune(studio: Studio, settings: CompositionConfig, validation: list, test: list, scales: list[float], mus: list[float],
             progress: Progress | None = None) -> tuple[str, dict, CompositionConfig]:
    """DAMC's coefficient choice: the best λ scale × μ on ``validation``, reported on the disjoint ``test`` items.

    Returns (markdown summary, result JSON, the settings with the chosen λ and μ applied: the sliders show them).
    """
    from composition.generate import GenerationConfig

    view = studio.cm.subset(settings.experts)

    def report(done: int, total: int, label: str) -> None:
        if progress:
            progress(done / max(total, 1), desc=label)

    result = tune_coefficients(view, validation, test, scales=scales, mus=mus, variant="DAMC", rule=RULES["letter"],
                               config=GenerationConfig(max_new_tokens=4), batch_items=4, progress=report)
    modalities = sorted({m for item in test for m in item.modalities})
    chosen = result.coefficients(view, modalities)
    mus = {e.modality: result.best_mu for e in view.experts.values() if e.training == "decoupled"}
    applied = settings.replace(lambdas=dict(chosen.lambdas), mus=mus)
    summary = (f"**Chosen on {result.n_validation} validation items:** λ scale {result.best_scale:g} (λ_i = scale/K), "
               f"μ {result.best_mu:g} — validation accuracy {100 * result.validation_accuracy:.1f} %. "
               f"**On {result.n_test} disjoint test items:** {100 * result.test_accuracy:.1f} % "
               f"(the paper's default λ = 1/K, μ = 1: {100 * result.default_test_accuracy:.1f} %). "
               "The sliders now hold the chosen values." + "".join(f"\n- {n}" for n in result.notes))
    return summary, result.to_json(), applied
