"""Why does a variant miss MCUB-synth items? Split its answers into their two steps.

    python -m training.diagnose answers --data ITEMS.json [...] --predictions ITEMS-predictions.jsonl [--json]
    python -m training.diagnose lookup [--variants NAMES] [--n 48] [--experts DIR ...] [--json]
    python -m training.diagnose merge --method NAME [--space dense|core] [--modules N] [--experts DIR ...] [--json]
    python -m training.diagnose slots --modality M [--scenes N] [--steps N] [--heldout-items N] [--heldout-seed S] [--json]

Our experts answer option questions by naming the option, then its letter ("cone (B)"), and
MCUB scores the letter. A wrong letter has two possible causes, and they need different fixes:

- ``answers`` reads a predictions file of ``python -m composition mcub`` on an MCUB-synth set
  (its items carry ``meta.options`` and ``meta.answer_category``) and reports per variant:
  ``letter`` (MCUB's accuracy), ``named`` (the first option named in the answer is the common
  one: what the variant recognised and combined) and ``agree`` (the letter is the named
  option's letter: the lookup step). ``named`` well above ``letter`` with a low ``agree``
  means the variant finds the answer and then writes the wrong letter.
- ``lookup`` measures that second step alone: text-only questions, the answer's name given
  ("cone ("), is the next token the option's letter? For the base LLM and each variant.
- ``merge`` looks at the merged text deltas themselves, no LLM pass: per module, how far a
  method moves from the experts' mean ``θ₀ = Σ τ_i / K`` (``relative_change`` =
  ‖θ − θ₀‖/‖θ₀‖), how much of that move lies outside the experts' own column and row spaces
  (``outside``: 0 means it only re-weights what the experts learned), the cosine between the
  merge and θ₀, and the numerical rank of the merged delta. A method that moves far and mostly outside adds directions no
  expert trained, which is what a small skill such as the letter lookup does not survive.

``slots`` is the perception check below all of that: it trains a fresh slot reader (stage 0 of
the recipe, ``training.slots``; for point clouds after the point encoder's pre-training) and
scores it on held-out scenes: per token, every slot of a scene (every object with its colour,
in answer order: what "describe" asks), and the categories alone. An expert cannot answer
more than its slot reader sees.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Mapping

from composition.evaluation.scoring import named_option

from .instructions import LETTERS


def answer_breakdown(items: Iterable[Mapping], predictions: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """Per variant: {"items", "letter", "named", "agree"} (fractions of its predictions).

    Args:
        items: MCUB-synth items (each with ``id`` and ``meta.options`` / ``meta.answer_category``).
        predictions: lines of a predictions file ({"id", "variant", "answer", "predicted", "correct"}).
    """
    meta = {}
    for item in items:
        m = item.get("meta") or {}
        if "options" not in m or "answer_category" not in m:
            raise ValueError(f"item {item.get('id')!r} has no meta.options / meta.answer_category; "
                             "this breakdown needs MCUB-synth items (python -m training.mcub_synth).")
        meta[item["id"]] = m
    counts: dict[str, dict[str, int]] = {}
    for p in predictions:
        if p["id"] not in meta:
            raise ValueError(f"prediction for item {p['id']!r}, which is not in the items file; use the file the predictions came from.")
        m = meta[p["id"]]
        named = named_option(p["answer"], m["options"])
        c = counts.setdefault(p["variant"], {"items": 0, "letter": 0, "named": 0, "agree": 0})
        c["items"] += 1
        c["letter"] += bool(p["correct"])
        c["named"] += named == m["answer_category"]
        c["agree"] += named is not None and p["predicted"] == LETTERS[m["options"].index(named)]
    return {v: {"items": c["items"], **{k: round(c[k] / c["items"], 4) for k in ("letter", "named", "agree")}}
            for v, c in counts.items()}


def merge_displacement(deltas: list["torch.Tensor"], method: str, space: str = "dense",
                       factors: list[tuple] | None = None, hyper: Mapping | None = None, seed: int = 0) -> dict[str, float]:
    """For one module: ``deltas`` are the experts' dense ``τ_i`` (``factors`` their ``(A, B, scale)``
    for the core space), ``seed`` the random methods' seed (the engine's per-layer one).
    Returns {"relative_change", "cosine", "outside", "rank"} (see the module docstring): the
    experts' spans are cut at 1e-6 of their largest singular value, the merge's rank at 1e-3;
    a move below 1e-6 of ‖θ₀‖ counts as none (its direction is rounding)."""
    import torch

    from composition.linalg import thin_svd
    from composition.methods import merge_deltas
    from composition.methods.core_space import core_merge, signed_basis

    k = len(deltas)
    weights = [1.0 / k] * k
    theta0 = sum(t * w for t, w in zip(deltas, weights))
    if space == "core":
        a, b, scale = core_merge(method, factors, weights, hyper or {}, seed=seed)
        merged = scale * (b @ a)
    else:
        merged = merge_deltas(method, deltas, weights, seed=seed, **dict(hyper or {}))
    change = merged - theta0
    # The experts' column and row spaces (spans cut at 1e-6 of the largest singular value).
    cols = signed_basis(torch.cat(deltas, dim=1), 1e-6)
    rows = signed_basis(torch.cat(deltas, dim=0).T, 1e-6)
    inside = cols @ (cols.T @ change @ rows) @ rows.T
    norm, base = float(change.norm()), max(float(theta0.norm()), 1e-30)
    singular = thin_svd(merged)[1]
    cosine = float((merged * theta0).sum()) / max(float(merged.norm()) * base, 1e-30)
    return {"relative_change": round(norm / base, 4), "cosine": round(cosine, 4),
            "outside": round(float((change - inside).norm()) / norm, 4) if norm > 1e-6 * base else 0.0,
            "rank": int((singular > singular[0] * 1e-3).sum()) if singular.numel() and singular[0] > 0 else 0}


def _merge(args) -> dict:
    from composition.discovery import scan_experts
    from composition.expert import load_expert
    from composition.methods import get_method, layer_seed

    if args.modules < 1:
        raise ValueError(f"--modules {args.modules}: expected a positive number of modules.")
    get_method(args.method)  # an unknown name fails here, naming the registered ones

    experts = [load_expert(entry.folder) for entry in scan_experts(args.experts)]
    experts = [e for e in experts if e.config.training == "decoupled"] or experts
    names = ["text" if e.config.training == "decoupled" else "shared" for e in experts]
    modules = [m for m in experts[0].deltas[names[0]].A if all(m in e.deltas[n].A for e, n in zip(experts, names))]
    if not modules:
        raise ValueError("the experts share no module with a text-side delta; give experts of one base model.")
    out = {}
    for module in modules[: args.modules]:
        ds = [e.deltas[n] for e, n in zip(experts, names)]
        if any(d.A[module].shape != ds[0].A[module].shape or d.B[module].shape != ds[0].B[module].shape for d in ds):
            raise ValueError(f"the experts' deltas of {module} have different shapes: give experts of one base model.")
        out[module] = merge_displacement([d.dense(module) for d in ds], args.method, args.space,
                                         [(d.A[module].float(), d.B[module].float(), d.scale) for d in ds],
                                         seed=layer_seed(0, module))
    mean = {k: round(sum(r[k] for r in out.values()) / len(out), 4) for k in ("relative_change", "cosine", "outside", "rank")}
    return {"method": args.method, "space": args.space, "experts": [e.name for e in experts], "modules": out, "mean": mean}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.diagnose", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    answers = sub.add_parser("answers", help="letter vs named option per variant, from an mcub predictions file")
    answers.add_argument("--data", required=True, nargs="+", help="the MCUB-synth items JSON (synth-3: its four subset files)")
    answers.add_argument("--predictions", required=True, help="its predictions .jsonl (written by python -m composition mcub)")
    answers.add_argument("--json", action="store_true")
    lookup = sub.add_parser("lookup", help="the option-letter lookup alone, text only, base and variants")
    lookup.add_argument("--variants", nargs="+", default=["NaiveMC", "DAMC"], metavar="NAMES")
    lookup.add_argument("--n", type=int, default=48, help="questions (default 48)")
    lookup.add_argument("--experts", nargs="+", default=None, metavar="DIR", help="expert folders (default: the bundled experts)")
    lookup.add_argument("--seed", type=int, default=0)
    lookup.add_argument("--json", action="store_true")
    merge = sub.add_parser("merge", help="how far a method's merged text delta moves off the experts' subspaces")
    merge.add_argument("--method", required=True, help="a registered merge method (python -m composition methods)")
    merge.add_argument("--space", choices=("dense", "core"), default="dense")
    merge.add_argument("--modules", type=int, default=4, help="the first N modules (default 4)")
    merge.add_argument("--experts", nargs="+", default=None, metavar="DIR",
                       help="expert folders (default: the bundled decoupled experts)")
    merge.add_argument("--json", action="store_true")
    slots = sub.add_parser("slots", help="train a fresh slot reader (stage 0) and score it on held-out scenes")
    slots.add_argument("--modality", required=True, choices=("image", "audio", "video", "point"))
    slots.add_argument("--scenes", type=int, default=None, help="training scenes (default: the build's)")
    slots.add_argument("--steps", type=int, default=None, help="stage-0 steps (default: the recipe's for the modality)")
    slots.add_argument("--heldout-items", type=int, default=200)
    slots.add_argument("--heldout-seed", type=int, default=7007, help="default 7007 (training.curves' held-out seed)")
    slots.add_argument("--cache", default=str(Path(__file__).resolve().parent.parent / ".cache" / "training"))
    slots.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    try:
        if args.command == "answers":
            items = [item for path in args.data for item in json.loads(Path(path).read_text(encoding="utf-8"))]
            result = answer_breakdown(items, _read_jsonl(Path(args.predictions)))
        elif args.command == "merge":
            result = _merge(args)
        elif args.command == "slots":
            result = _slots(args)
        else:
            result = _lookup(args)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    elif args.command == "answers":
        print(f"{'variant':<22} {'items':>5} {'letter':>7} {'named':>7} {'agree':>7}")
        for variant, r in result.items():
            print(f"{variant:<22} {r['items']:>5} {r['letter']:>7.3f} {r['named']:>7.3f} {r['agree']:>7.3f}")
    elif args.command == "merge":
        print(f"{args.method}, {args.space}: the merged text delta of {', '.join(result['experts'])} against their mean")
        print(f"{'module':<34} {'moved':>7} {'cosine':>7} {'outside':>8} {'rank':>6}")
        for module, r in list(result["modules"].items()) + [("mean", result["mean"])]:
            print(f"{module:<34} {r['relative_change']:>7.2f} {r['cosine']:>7.2f} {r['outside']:>8.2f} {r['rank']:>6.1f}")
    elif args.command == "slots":
        held = result["heldout"]
        print(f"{args.modality}: slot reader trained on {result['train_scenes']} scenes for {result['steps']} steps "
              f"({result['seconds']:.0f} s); on {result['heldout_scenes']} held-out scenes: tokens {held['token']:.3f}, "
              f"every slot {held['scene']:.3f}, categories {held['categories']:.3f}")
    else:
        for variant, fraction in result.items():
            print(f"{variant:<22} {fraction:.3f}")
    return 0


def _slots(args) -> dict:
    import time

    from modalities.checks import check_int
    from composition.base_llm import load_base_llm

    from .data import TRAIN_SCENES, prepare_modality
    from .recipe import TrainConfig, Trainer
    from .render_audio import speech_available

    # --steps is the count this modality trains for, so no per-modality factor on top of it.
    config = TrainConfig() if args.steps is None else TrainConfig(stage0_steps=args.steps, stage0_scale_by_modality=())
    scenes = TRAIN_SCENES if args.scenes is None else args.scenes
    check_int(scenes, "--scenes", 1)
    check_int(args.heldout_items, "--heldout-items", 1)
    check_int(args.heldout_seed, "--heldout-seed", 0)
    quiet = lambda message: None  # noqa: E731
    data = prepare_modality(args.modality, scenes, config.seed, Path(args.cache), log=quiet)
    heldout = prepare_modality(args.modality, args.heldout_items, args.heldout_seed, Path(args.cache), log=quiet)
    trainer = Trainer(load_base_llm(), config, log=quiet)
    start = time.perf_counter()
    parts = trainer.stage0_parts(data, args.modality != "audio" or speech_available(), heldout)
    return {"modality": args.modality, "train_scenes": len(data), "steps": config.stage0_steps_for(args.modality),
            "heldout_scenes": len(heldout), "heldout_seed": args.heldout_seed,
            "heldout": next(row["stage0_heldout"] for row in parts.log if "stage0_heldout" in row),
            "seconds": round(time.perf_counter() - start, 1)}


def _lookup(args) -> dict[str, float]:
    from composition.base_llm import load_base_llm
    from composition.discovery import scan_experts
    from composition.composer import ComposedModel

    from .lookup import letter_lookup_accuracy

    cm = ComposedModel(load_base_llm())
    for entry in scan_experts(args.experts):
        cm.load_expert(entry.folder)
    return letter_lookup_accuracy(cm, args.variants, n=args.n, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
