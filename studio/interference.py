"""The Learn tab's "Why decoupling helps": the interference curve, a rerun of it, and items where it shows.

Plain functions (no gradio): the curve of a stored run (``docs/data/interference-seed*.json``,
written by ``python -m composition interference --json``) as a plotly figure, a rerun of it
on N items with a ``progress(fraction, desc=...)`` callback, and example items where the
shared merge fails and DAMC does not, with both answers and the item's input files.

    fig, summary = stored_curves()                       # the first stored run
    fig, summary, run = rerun_curves(studio, 20, progress=gr.Progress())   # the stored run's set, first 20 items
    examples = failure_examples(run)                     # [{"id", "question", "gold", "shared_answer", "damc_answer",
                                                         #   "inputs": {modality: path | None}, "note"}]
    failure_examples_markdown(examples), example_media(examples[0])   # words; {"image": path, ..., "point": figure}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from composition.config import CompositionConfig
from composition.errors import CompositionError
from composition.evaluation.interference import (CRITERION, DECOUPLED, LABELS, MODALITY_CHECK, RETENTION_NOTE, ROUTE_CHECK,
                                                 SHARED, copied_path, run_interference)

from .session import Studio

REPO = Path(__file__).resolve().parent.parent
STORED = REPO / "docs" / "data"
STORED_GLOB = "interference-seed*.json"
# The stored runs' example files, copied here (``interference --replot ... --copy-examples``): shown on a
# machine where their MCUB-synth set is not built.
EXAMPLE_COPIES = REPO / "assets" / "interference-examples"
# The app's rerun: fewer scales than the docs' curve (each scale runs every item), the route check left out.
RERUN_SCALES = (1.0, 2.0, 4.0)
MAX_RERUN_ITEMS = 200
COLOURS = {DECOUPLED: "#2563eb", SHARED: "#ea580c", ROUTE_CHECK: "#ea580c", MODALITY_CHECK: "#16a34a"}
DASHES = {ROUTE_CHECK: "dot", MODALITY_CHECK: "dashdot"}
Progress = Callable[..., None]


# --- stored runs ----------------------------------------------------------------------
def stored_runs(folder: Path = STORED) -> list[str]:
    """The stored runs' names (``interference-seed6173``), for a dropdown; the first is the default."""
    return sorted(p.stem for p in Path(folder).glob(STORED_GLOB))


def load_run(name: str | None = None, folder: Path = STORED) -> dict:
    """A stored run's JSON (``name`` from ``stored_runs``; None: the first)."""
    names = stored_runs(folder)
    if not names:
        raise CompositionError("no stored interference run is in docs/data; run `python -m composition interference "
                               "--json > docs/data/interference-seedS.json`, or rerun the curve here.")
    name = names[0] if name is None else name
    if name not in names:
        raise CompositionError(f"stored run {name!r} is unknown; expected one of {names}.")
    return json.loads((Path(folder) / f"{name}.json").read_text(encoding="utf-8"))


def stored_curves(name: str | None = None, folder: Path = STORED):
    """(plotly figure, markdown summary) of a stored run."""
    run = load_run(name, folder)
    return curves_figure(run), summary_markdown(run)


# --- the figure and the words ---------------------------------------------------------
def curves_figure(run: dict, *, route_check: bool = True, named: bool = True):
    """Accuracy against s (λ = s·1/K per expert): DAMC and the shared merge with their intervals
    (and, when the run has them, the shared merge with λ on text tokens only, dotted, or on
    modality tokens only, dash-dotted; and, faint, how often each names the right option
    before writing its letter)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    variants = (DECOUPLED, SHARED, ROUTE_CHECK, MODALITY_CHECK) if route_check else (DECOUPLED, SHARED)
    traces = [(v, None, LABELS[v]) for v in variants]
    if named and all(p.get("named") for p in run["points"]):
        traces += [(v, "named", f"{'DAMC' if v == DECOUPLED else 'shared'}: names the right option (before its letter)")
                   for v in (DECOUPLED, SHARED)]
    for variant, key, label in traces:
        pts = [(p, p[key] if key else p) for p in run["points"] if variant in (p[key] if key else p)["accuracy"]]
        if not pts:
            continue
        acc = [m["accuracy"][variant] for _, m in pts]
        fig.add_trace(go.Scatter(
            x=[p["scale"] for p, _ in pts], y=[100 * a for a in acc], name=label, mode="lines+markers",
            opacity=0.6 if key else 1.0,
            line={"color": COLOURS[variant], "dash": "longdash" if key else DASHES.get(variant, "solid"),
                  "width": 1.5 if key else 2.5},
            error_y={"type": "data", "symmetric": False,
                     "array": [100 * (m["interval"][variant][1] - a) for (_, m), a in zip(pts, acc)],
                     "arrayminus": [100 * (a - m["interval"][variant][0]) for (_, m), a in zip(pts, acc)]},
            customdata=[[m["damc_vs_shared"]["right_only_damc"], m["damc_vs_shared"]["right_only_shared"],
                         m["damc_vs_shared"]["p_value"]] for _, m in pts],
            hovertemplate="s = %{x}: %{y:.1f} %<br>right only with DAMC / shared: %{customdata[0]} / %{customdata[1]}"
                          "<br>McNemar p = %{customdata[2]:.3g}<extra></extra>"))
    fig.add_hline(y=25, line_dash="dash", line_color="grey", annotation_text="chance (25 %)")
    level = int(round(100 * run.get("level", 0.95)))
    fig.update_layout(title=f"{_what(run)}: accuracy with {level} % intervals", height=420,
                      xaxis_title="s: every expert's λ = s·(1/K) (s = 1 is the paper's)", yaxis_title="accuracy (%)",
                      yaxis_range=[0, 105], legend={"orientation": "h", "y": -0.25},
                      margin={"l": 60, "r": 20, "t": 50, "b": 90})
    fig.update_xaxes(tickvals=[p["scale"] for p in run["points"]])
    return fig


def summary_markdown(run: dict) -> str:
    """A table per scale (accuracies, right-alone counts, McNemar p) and what the curve shows."""
    checks = [v for v in (ROUTE_CHECK, MODALITY_CHECK) if any(v in p["accuracy"] for p in run["points"])]
    heads = {ROUTE_CHECK: "shared, λ on text tokens only", MODALITY_CHECK: "shared, λ on modality tokens only"}
    named = all(p.get("named") for p in run["points"])
    rows = ["| s (λ = s/K) | DAMC | shared | right only DAMC / shared | McNemar p |" + "".join(f" {heads[v]} |" for v in checks)
            + (" names the right option: DAMC / shared |" if named else ""),
            "|---|---|---|---|---|" + "---|" * (len(checks) + named)]
    for p in run["points"]:
        d = p["damc_vs_shared"]
        extra = "".join(f" {100 * p['accuracy'][v]:.1f} % |" if v in p["accuracy"] else " — |" for v in checks)
        if named:
            n = p["named"]["accuracy"]
            extra += f" {100 * n[DECOUPLED]:.1f} % / {100 * n[SHARED]:.1f} % |"
        rows.append(f"| {p['scale']:g} | {100 * p['accuracy'][DECOUPLED]:.1f} % | {100 * p['accuracy'][SHARED]:.1f} % | "
                    f"{d['right_only_damc']} / {d['right_only_shared']} | {d['p_value']:.3g} |{extra}")
    out = [f"**{_what(run)}.** Every expert's λ is s·(1/K); s = 1 is the paper's NaiveMC and DAMC. The shared merge "
           "adds every expert's delta to *every* token, the modality tokens included; DAMC gives a modality's tokens "
           "only that modality's own delta, so a larger λ reaches its text tokens alone."
           + (" Solid lines: accuracy (the letter, MCUB's score). Faint dashed lines: how often the answer *names* "
              "the right option before writing its letter: what the composition made of its inputs, apart from the "
              "letter lookup." if named else ""), "\n".join(rows)]
    criterion = run.get("criterion")
    if criterion:
        verdict = "holds" if criterion["holds"] else "does **not** hold on this run"
        out.append(f"At s = {criterion['scale']:g}, DAMC − shared = {criterion['gap']:+.3f} (p = {criterion['p_value']:.3g}): "
                   f"the bar of a gap ≥ {criterion['min_gap']:g} with p < {criterion['alpha']:g} {verdict}.")
    retention = run.get("retention")
    if retention:
        kept = retention["kept"]
        out.append(f"**What a larger λ costs the base's own text skills** ({retention['items']} text-only questions, no "
                   f"input; the base alone answers {100 * retention['base_accuracy']:.0f} % right): the share of those "
                   "each composition still answers right — "
                   + "; ".join(f"s = {s}: DAMC {_share(k.get(DECOUPLED))}, shared {_share(k.get(SHARED))}"
                               for s, k in kept.items()) + ".")
    else:
        out.append(f"_{RETENTION_NOTE}._")
    return "\n\n".join(out)


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _what(run: dict) -> str:
    data = run.get("data") or {}
    if data.get("seed") is not None:
        return f"MCUB-{data.get('data', 'synth-4')} seed {data['seed']}, {run['items']} items"
    return f"{data.get('data', 'items')}, {run['items']} items"


# --- rerun ----------------------------------------------------------------------------
def rerun_curves(studio: Studio, n_items: int, progress: Progress | None = None, *, seed: int | None = None,
                 items: Sequence | None = None, scales: Sequence[float] = RERUN_SCALES, route_check: bool = False,
                 settings: CompositionConfig | None = None):
    """Run the curve again on the first ``n_items`` items of an MCUB-synth-4 set built on this machine.

    Args:
        studio: the session; its loaded experts must hold a shared and a decoupled expert per
            modality (the bundled set does); ``settings.experts``, when given, picks them.
        n_items: items to run (1..200); each runs at every scale.
        progress: ``progress(fraction, desc=...)`` (gr.Progress), after each chunk of items.
        seed: the MCUB-synth-4 seed (default: the first stored run's, so the rerun repeats its
            first items; a set that is not built raises an error naming the command that builds it).
        items: McubItem list to use instead (e.g. ``mcub_tab.load_items(...)``); ``n_items`` still caps it.
        scales: s in λ = s·(1/K). route_check: also run the shared merge with λ on text tokens only.
    Returns:
        (plotly figure, markdown summary, run JSON: what ``failure_examples`` takes).
    """
    from composition.evaluation import ALL_FOUR, DEFAULT_CONFIG, load_mcub, synth_sets

    if isinstance(n_items, bool) or not isinstance(n_items, (int, float)) or not 1 <= n_items <= MAX_RERUN_ITEMS:
        raise CompositionError(f"items={n_items!r}; expected 1 to {MAX_RERUN_ITEMS} (each item runs at every scale).")
    n_items = int(n_items)
    if items is None:
        if seed is None:
            stored = stored_runs()
            seed = (load_run(stored[0]).get("data") or {}).get("seed", 0) if stored else 0
        items = load_mcub(synth_sets("synth-4", seed=seed, n_items=n_items, at_least=True)[ALL_FOUR])
        data = {"data": "synth-4", "seed": seed}
    else:
        data = {"data": "items given"}
    items = list(items)[:n_items]
    view = studio.cm if settings is None or settings.experts is None else studio.cm.subset(settings.experts)

    def report(done: int, total: int, label: str) -> None:
        if progress:
            progress(done / max(total, 1), desc=f"{label}: {done}/{total} item runs")

    result = run_interference(view, items, scales=scales, route_check=route_check, config=DEFAULT_CONFIG, batch_items=4,
                              progress=report, resamples=2000, data=data)
    run = result.to_json()
    return curves_figure(run), summary_markdown(run), run


# --- example items --------------------------------------------------------------------
def failure_examples(run: dict | str | None = None, scale: float = CRITERION["scale"], k: int = 3) -> list[dict]:
    """Up to ``k`` items the shared merge gets wrong and DAMC right at ``scale``, from a run.

    Args:
        run: a run's JSON (``rerun_curves``' third value), a stored run's name, or None (the first stored run).
        scale: the point to take them from (default 2, where the issue measures the gap).
    Returns:
        one dict per item: ``id``, ``question``, ``gold``, ``shared_answer``, ``damc_answer``,
        ``inputs`` ({modality: absolute path, or None when the file is not on this machine}) and
        ``note`` (how to build the set when files are missing, else "").
    """
    from composition.discovery import workspace_root
    from composition.evaluation.synth import synth_build_command

    run = run if isinstance(run, dict) else load_run(run)
    point = next((p for p in run["points"] if p["scale"] == float(scale)), None)
    if point is None:
        raise CompositionError(f"the run has no point at s = {scale:g}; its scales are "
                               f"{[p['scale'] for p in run['points']]}.")
    data = run.get("data") or {}
    out = []
    for ex in point.get("shared_fails_damc_right", [])[:k]:
        inputs = {}
        for modality, shown in ex["inputs"].items():
            path = Path(shown)
            path = path if path.is_absolute() else workspace_root() / path
            if not path.is_file():
                path = EXAMPLE_COPIES / copied_path(shown)
            inputs[modality] = str(path) if path.is_file() else None
        note = ""
        if None in inputs.values():
            note = "the item's files are not on this machine"
            if data.get("seed") is not None:
                note += f"; build the set with: {synth_build_command(data.get('data', 'synth-4'), data['seed'], data.get('synth_items', 200))}"
        out.append({"id": ex["id"], "question": ex["question"], "gold": ex["gold"],
                    "shared_answer": ex["answers"].get(SHARED, ""), "damc_answer": ex["answers"].get(DECOUPLED, ""),
                    "inputs": inputs, "note": note})
    return out


def failure_examples_markdown(examples: Sequence[dict], scale: float = CRITERION["scale"]) -> str:
    """The examples in words: the question, the gold letter, and what each composition answered."""
    if not examples:
        return f"_No item at s = {scale:g} where the shared merge fails and DAMC does not._"
    parts = []
    for i, ex in enumerate(examples, 1):
        parts.append(f"**Example {i}** (`{ex['id']}`, λ = {scale:g}·(1/K)): {ex['question']}\n\n"
                     f"- gold: **{ex['gold']}**\n- shared merge: `{ex['shared_answer'].strip()}` ✗\n"
                     f"- DAMC: `{ex['damc_answer'].strip()}` ✓" + (f"\n\n_{ex['note']}._" if ex["note"] else ""))
    return "\n\n".join(parts)


def example_media(example: dict) -> dict[str, object]:
    """What the UI shows of an example's inputs: ``{"image": path, "audio": path, "video": path,
    "point": plotly 3-D scatter}`` (None for a file that is not on this machine)."""
    from .inputs import point_preview

    out: dict[str, object] = {}
    for modality, path in example["inputs"].items():
        if modality == "point":
            out[modality] = point_preview(path)[0] if path else None
        else:
            out[modality] = path
    return out
