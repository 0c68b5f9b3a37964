"""The Benchmark tab (MCUB accuracy; the speed figures are `python -m composition bench`): accuracy by variant with
paired statistics (and, optionally, what each variant keeps of the base's text skills), a DAMC sweep, the λ/μ
choice on validation items with labels, and the same choice without labels (AdaMMS's criterion).

Every run uses the per-request model view; ``progress`` is any ``callable(fraction, desc)`` (the app passes
gr.Progress).
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


def run_mcub(studio: Studio, settings: CompositionConfig, items: list, progress: Progress | None = None,
             retention: bool = False):
    """(plotly bar chart with 95 % intervals, markdown summary, result JSON) of accuracy by variant.

    The summary is a table: accuracy, its 95 % bootstrap interval, and (``retention``) what each variant
    keeps of the base's right answers on the text-only retention set; then every pair of variants on the
    same items (right-alone counts, exact McNemar p). The JSON has ``statistics`` (and ``retention``).
    """
    from composition.evaluation.paired import markdown_tables

    present = {m for item in items for m in item.modalities}
    plan = settings.plan(studio.cm, present)
    result = _evaluate(studio, settings, items, plan.specs, settings.coefficients(studio.cm.experts, present), progress,
                       "benchmark")
    acc = result.accuracy()
    stats = result.statistics()
    out = result.to_json()
    lines = markdown_tables(stats)
    if retention:
        kept = _retention(studio, settings, list(acc), progress)
        out["retention"] = kept
        lines = _with_retention_column(lines, kept, len(acc))
    summary = (f"**{result.n_items} items**, {len(acc)} variants in {result.seconds:.1f} s "
               f"({result.items_per_second:.2f} items/s). Chance is 25 %." +
               "".join(f"\n- skipped {n}: {why}" for n, why in plan.skipped.items()) + "\n\n" + "\n".join(lines))
    intervals = {n: stats["variants"][n]["ci95"] for n in acc}
    return accuracy_chart(acc, result.n_items, intervals), summary, out


def _retention(studio: Studio, settings: CompositionConfig, variants: list[str], progress: Progress | None) -> dict:
    from composition.evaluation.retention import measure_retention

    view = studio.cm.subset(settings.experts)
    report = measure_retention(view, variants, coefficients=settings.coefficients(studio.cm.experts, set()),
                               progress=(lambda d, t: progress(d / t, desc=f"retention: {d}/{t} items"))
                               if progress else None)
    return report.to_json()


def _with_retention_column(lines: list[str], kept: dict, n_variants: int) -> list[str]:
    """The accuracy table (its first ``2 + n_variants`` lines) with a column: the share of the base's right
    text-only answers each variant keeps."""
    out = list(lines)
    out[0] += " keeps of the base's text answers |"
    out[1] += "---|"
    for k in range(2, 2 + n_variants):
        s = kept["variants"].get(out[k].split(" | ")[0][2:])
        share = "n/a" if s is None or s["retention"] is None else f"{100 * s['retention']:.0f} % ({s['kept']}/{s['base_right']})"
        out[k] += f" {share} |"
    return out


def accuracy_chart(acc: dict[str, float], n_items: int, intervals: dict[str, list[float]] | None = None):
    import plotly.graph_objects as go

    names = list(acc)
    colours = [KIND_COLOURS[VariantSpec.parse(n).kind.value] for n in names]
    error = None
    if intervals:  # asymmetric error bars: the 95 % bootstrap interval around each accuracy
        error = {"type": "data", "symmetric": False, "array": [100 * (intervals[n][1] - acc[n]) for n in names],
                 "arrayminus": [100 * (acc[n] - intervals[n][0]) for n in names]}
    fig = go.Figure(go.Bar(x=names, y=[100 * acc[n] for n in names], text=[f"{100 * acc[n]:.0f} %" for n in names],
                           textposition="outside", marker_color=colours, error_y=error))
    fig.add_hline(y=25, line_dash="dot", annotation_text="chance (25 %)")
    fig.update_layout(title=f"MCUB accuracy by variant ({n_items} items{', 95 % intervals' if intervals else ''})",
                      yaxis_title="accuracy (%)",
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


def run_search(studio: Studio, settings: CompositionConfig, validation: list, test: list, scales: list[float],
               mus: list[float], progress: Progress | None = None, apply: str = "unsupervised",
               sample: int | None = 100) -> tuple[str, dict, CompositionConfig]:
    """DAMC's λ/μ chosen two ways from one grid run on ``validation`` (every cell in one batch): by validation
    accuracy (labels) and by AdaMMS's criterion (no labels: the cell whose answers change least against its
    neighbouring cells); both and the paper's default are then scored on the disjoint ``test`` items with
    paired statistics.

    Returns (markdown summary, result JSON, the settings with the ``apply`` choice on the sliders:
    "unsupervised" or "labelled").
    """
    from composition.evaluation.paired import markdown_tables
    from composition.evaluation.unsupervised import search_coefficients
    from composition.generate import GenerationConfig

    if apply not in ("unsupervised", "labelled"):
        raise CompositionError(f"apply={apply!r}; expected unsupervised or labelled.")
    view = studio.cm.subset(settings.experts)

    def report(done: int, total: int, label: str) -> None:
        if progress:
            progress(done / max(total, 1), desc=label)

    result = search_coefficients(view, validation, test, scales=scales, mus=mus, variant="DAMC", rule=RULES["letter"],
                                 config=GenerationConfig(max_new_tokens=4), batch_items=4, sample=sample, progress=report)
    cell = result.unsupervised if apply == "unsupervised" else result.labelled
    modalities = sorted({m for item in test for m in item.modalities})
    from composition.evaluation.tune import coefficients_at

    chosen = coefficients_at(view, modalities, cell.scale, cell.mu)
    mus_applied = {e.modality: cell.mu for e in view.experts.values() if e.training == "decoupled"}
    applied = settings.replace(lambdas=dict(chosen.lambdas), mus=mus_applied)
    out = result.to_json()
    summary = (f"**Searched on {result.n_search} validation items** ({len(result.cells)} cells, every cell in one batch). "
               f"With labels (best validation accuracy): {result.labelled.label}. Without labels (AdaMMS: fewest answers "
               f"that change against the neighbouring cells, {result.differences[result.unsupervised]:g} of "
               f"{result.n_search}): {result.unsupervised.label}. **On {result.n_test} disjoint test items:**\n\n"
               + "\n".join(markdown_tables(result.test)) +
               f"\n\nThe sliders now hold the {apply} choice." + "".join(f"\n- {n}" for n in result.notes))
    return summary, out, applied


def run_retention(studio: Studio, settings: CompositionConfig, progress: Progress | None = None) -> tuple[str, dict]:
    """What each selected variant keeps of the base's text-only skills (option-letter lookup, chat checks, facts,
    arithmetic), scored against the base alone: (markdown table, result JSON)."""
    kept = _retention(studio, settings, list(settings.variants or []), progress)
    base = kept["base"]
    lines = [f"The base alone answers {100 * base['accuracy']:.0f} % of the {sum(kept['parts'].values())} text-only items "
             f"right ({', '.join(f'{p} {100 * a:.0f} %' for p, a in base['parts'].items())}).", "",
             "| variant | right | 95 % interval | keeps of the base's right answers | lost | gained | McNemar p vs base |",
             "|---|---|---|---|---|---|---|"]
    for v, s in kept["variants"].items():
        share = "n/a" if s["retention"] is None else f"{100 * s['retention']:.0f} % ({s['kept']}/{s['base_right']})"
        lines.append(f"| {v} | {100 * s['accuracy']:.0f} % | {100 * s['ci95'][0]:.0f}–{100 * s['ci95'][1]:.0f} % | {share} | "
                     f"{s['lost']} | {s['gained']} | {s['p_value_vs_base']:.3g} |")
    return "\n".join(lines), kept
