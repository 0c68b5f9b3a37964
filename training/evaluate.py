"""Held-out accuracy of trained experts on questions about their own modality.

``heldout_accuracy`` scores one expert during a build (encoded held-out scenes). The command
checks the targets of any set of experts on freshly rendered scenes, end to end (file ->
loader -> encoder -> expert), the way a user's files go:

    python -m training.evaluate --experts assets/experts --seed 90210 --items 42 [--examples] [--json] [--check]

It prints, per expert, exact match per question kind and overall, and whether it meets the
targets (decoupled >= 0.8 overall, shared >= 0.7, no kind below 0.5); ``--examples`` also asks
the single-modality examples of examples/manifest.json of both experts of their modality.
"""
from __future__ import annotations

import re

import numpy as np

from modalities.checks import check_int

from .data import ModalityData
from .instructions import KINDS, question_for


def normalize(text: str) -> str:
    """Lower case, punctuation and extra spaces removed: 'A red ball.' == 'a red ball'."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def heldout_accuracy(trainer_or_cm, expert_folder, heldout: ModalityData, colours_known: bool = True, seed: int = 0,
                     max_new_tokens: int = 24) -> dict[str, float]:
    """Exact-match accuracy (after normalization) per question kind and overall.

    Args:
        trainer_or_cm: a ComposedModel (or a Trainer, whose composed model is used).
        expert_folder: the saved expert (evaluating the artifact users get, fp16 included).
        heldout: scenes never seen in training, with their encoded inputs.
    """
    from composition.composer import encode_with_registry
    from composition.inputs import ModalInput
    from composition.generate import GenerationConfig

    cm = getattr(trainer_or_cm, "cm", trainer_or_cm)
    expert = cm.load_expert(expert_folder)
    previous = cm.feature_fn
    # Held-out inputs of frozen encoders are features already; point clouds are encoded by the expert's own encoder.
    cm.feature_fn = lambda e, item: encode_with_registry(e, item) if e.modality == "point" else item.data
    rng = np.random.default_rng([seed, 99])
    kinds = [k for k in KINDS if colours_known or k != "colour"]
    hits: dict[str, list[bool]] = {k: [] for k in kinds}
    try:
        for i, (scene, data) in enumerate(zip(heldout.scenes, heldout.inputs)):
            kind = kinds[i % len(kinds)]
            question, answer = question_for(kind, scene, heldout.modality, rng, colours_known)
            got = cm.compare(question, [ModalInput(heldout.modality, data)], [f"expert:{expert.name}"],
                             config=GenerationConfig(max_new_tokens=max_new_tokens))[0].answer
            hits[kind].append(normalize(got) == normalize(answer))
    finally:
        cm.feature_fn = previous
        cm.remove_expert(expert.name)
    result = {k: round(float(np.mean(v)), 3) for k, v in hits.items() if v}
    result["overall"] = round(float(np.mean([x for v in hits.values() for x in v])), 3)
    return result


# --- python -m training.evaluate: anyone can check the targets on fresh scenes -------------------
# The targets of the bundled experts (issue "each single expert reliable on its modality"),
# measured on questions about each expert's own modality.
TARGET_OVERALL = {"decoupled": 0.8, "shared": 0.7}
TARGET_PER_KIND = 0.5
# Seeds that rendered scenes someone trained or tuned on: training (0), the build's held-out
# split (1000), tests/test_bundled_experts.py (4242), training.curves (7007).
USED_SEEDS = (0, 1000, 4242, 7007)
DEFAULT_SEED = 90210


class EvaluateError(ValueError):
    """A bad evaluation request (no experts, a bad count, an unknown manifest)."""


def heldout_questions(modality: str, n: int, seed: int, colours_known: bool = True) -> list[dict]:
    """``n`` fresh scenes of ``modality`` from ``seed``, one question each (the kinds in turn, so
    each kind gets about n / kinds): [{"scene", "kind", "question", "answer"}]. Pure: no files."""
    from .world import MODALITIES, World

    check_int(n, "items", 1, owner="heldout_questions")
    world = World(seed)
    rng = np.random.default_rng([seed, MODALITIES.index(modality), 21])
    kinds = [k for k in KINDS if colours_known or k != "colour"]
    items = []
    for i in range(n):
        scene = world.sample_scene(rng)
        question, answer = question_for(kinds[i % len(kinds)], scene, modality, rng, colours_known)
        items.append({"scene": scene, "kind": kinds[i % len(kinds)], "question": question, "answer": answer})
    return items


def exact_match_table(items: list[dict], answers: list[str]) -> dict[str, float]:
    """Exact match (after ``normalize``) per question kind and overall, in KINDS order; kinds with no item are absent."""
    if len(items) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(items)} items; expected one answer per item.")
    hits: dict[str, list[bool]] = {}
    for item, got in zip(items, answers):
        hits.setdefault(item["kind"], []).append(normalize(got) == normalize(item["answer"]))
    table = {k: round(float(np.mean(hits[k])), 3) for k in KINDS if k in hits}
    table["overall"] = round(float(np.mean([h for v in hits.values() for h in v])), 3) if hits else 0.0
    return table


def target_misses(training: str, table: dict[str, float]) -> list[str]:
    """What keeps ``table`` (an expert's exact-match table) from the targets; empty when it meets them."""
    misses = []
    if table["overall"] < TARGET_OVERALL[training]:
        misses.append(f"overall {table['overall']:.3f} < {TARGET_OVERALL[training]}")
    misses += [f"{k} {v:.3f} < {TARGET_PER_KIND}" for k, v in table.items() if k != "overall" and v < TARGET_PER_KIND]
    return misses


def ask_all(cm, names: list[str], items: list[dict], inputs_of, max_new_tokens: int = 24) -> dict[str, list[str]]:
    """Each named expert's answer to each item (the experts of one modality in one batch per item).
    ``inputs_of(item)`` gives the item's ModalInput list."""
    from composition.generate import GenerationConfig

    answers: dict[str, list[str]] = {name: [] for name in names}
    for item in items:
        got = cm.compare(item["question"], inputs_of(item), [f"expert:{n}" for n in names],
                         config=GenerationConfig(max_new_tokens=max_new_tokens))
        for name, answer in zip(names, got):
            answers[name].append(answer.answer)
    return answers


def render_inputs(items: list[dict], modality: str, folder) -> None:
    """Render each item's scene into ``folder`` and load it with the modality's loader (end to end,
    as a user's file): sets ``item["inputs"]``."""
    from pathlib import Path

    from composition.inputs import load_inputs

    from .world import EXTENSIONS, render

    for i, item in enumerate(items):
        path = render(item["scene"], modality, Path(folder) / f"{modality}-{i:04d}{EXTENSIONS[modality]}")
        item["inputs"] = load_inputs({modality: [path]})


def evaluate_experts(cm, experts: list, n: int, seed: int, log=lambda msg: None) -> dict:
    """Per expert (loaded in ``cm``): its exact-match table on ``n`` fresh scenes of its modality,
    and what misses the targets. ``experts``: the loaded Expert objects."""
    import tempfile

    from .render_audio import speech_available

    result = {}
    for modality in sorted({e.modality for e in experts}):
        names = [e.name for e in experts if e.modality == modality]
        colours_known = modality != "audio" or speech_available()
        items = heldout_questions(modality, n, seed, colours_known)
        with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
            render_inputs(items, modality, tmp)
            log(f"{modality}: {n} scenes rendered; asking {', '.join(names)}")
            answers = ask_all(cm, names, items, lambda item: item["inputs"])
        for expert in (e for e in experts if e.modality == modality):
            table = exact_match_table(items, answers[expert.name])
            result[expert.name] = {"modality": modality, "training": expert.training, "items": n, "accuracy": table,
                                   "target": {"overall": TARGET_OVERALL[expert.training], "per_kind": TARGET_PER_KIND},
                                   "misses": target_misses(expert.training, table)}
    return result


def check_examples(cm, experts: list, manifest) -> list[dict]:
    """Every single-modality example of ``manifest`` (examples/manifest.json) asked of each loaded
    expert of its modality: [{"example", "expert", "question", "expected", "answer", "right"}]."""
    import json
    from pathlib import Path

    from composition.inputs import load_inputs

    path = Path(manifest)
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    except (KeyError, TypeError):
        raise EvaluateError(f"{path} has no 'examples' list; expected an examples manifest like examples/manifest.json.") from None
    rows = []
    for example in examples:
        if example.get("kind") != "single":
            continue
        (modality, file), = example["files"].items()
        names = [e.name for e in experts if e.modality == modality]
        if not names:
            continue
        inputs = load_inputs({modality: [path.parent / file]})
        item = {"question": example["question"], "answer": example["answer"]}
        answers = ask_all(cm, names, [item], lambda _, inputs=inputs: inputs)
        for name in names:
            got = answers[name][0]
            rows.append({"example": example["id"], "expert": name, "question": example["question"],
                         "expected": example["answer"], "answer": got, "right": normalize(got) == normalize(example["answer"])})
    return rows


def format_report(result: dict, examples: list[dict] | None = None) -> str:
    """The tables a person reads: one row per expert, one column per question kind."""
    kinds = [k for k in KINDS if any(k in r["accuracy"] for r in result.values())]
    lines = [f"{'expert':<16} {'kind':<9} " + " ".join(f"{k[:7]:>7}" for k in kinds) + f" {'overall':>7}  target"]
    for name, r in result.items():
        a = r["accuracy"]
        cells = " ".join(f"{a[k]:>7.3f}" if k in a else f"{'-':>7}" for k in kinds)
        verdict = "met" if not r["misses"] else "MISSED: " + "; ".join(r["misses"])
        lines.append(f"{name:<16} {r['training']:<9} {cells} {a['overall']:>7.3f}  {verdict}")
    if examples is not None:
        lines.append("")
        lines.append(f"examples: {sum(r['right'] for r in examples)}/{len(examples)} answered exactly right")
        for r in examples:
            lines.append(f"  {'ok ' if r['right'] else 'NO '} {r['expert']:<14} {r['example']:<16} "
                         f"{r['question']!r} -> {r['answer']!r} (expected {r['expected']!r})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys
    import warnings
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m training.evaluate",
                                     description="Exact match of experts on fresh held-out scenes of their own modality.")
    parser.add_argument("--experts", nargs="+", default=None, metavar="DIR",
                        help="expert folders, or folders of them (default: the bundled experts)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"scene seed (default {DEFAULT_SEED}; "
                        f"{', '.join(map(str, USED_SEEDS))} rendered scenes that training or tests used)")
    parser.add_argument("--items", type=int, default=42, help="held-out scenes per modality (default 42: 6 per question kind)")
    parser.add_argument("--examples", nargs="?", const="examples/manifest.json", default=None, metavar="MANIFEST",
                        help="also ask the single-modality examples of MANIFEST (default examples/manifest.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 when an expert misses its targets or an example is wrong")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        check_int(args.items, "--items", 1, owner="python -m training.evaluate")
        check_int(args.seed, "--seed", 0, owner="python -m training.evaluate")
        if args.seed in USED_SEEDS:
            print(f"warning: seed {args.seed} rendered scenes that training or a test used; the targets are measured on a fresh seed.",
                  file=sys.stderr)
        examples_file = Path(args.examples) if args.examples is not None else None
        if examples_file is not None and not examples_file.is_file():
            raise EvaluateError(f"examples manifest {str(examples_file)!r} does not exist; pass the path of examples/manifest.json.")
        from composition.base_llm import load_base_llm
        from composition.discovery import scan_experts
        from composition.composer import ComposedModel

        entries = scan_experts(args.experts)
        cm = ComposedModel(load_base_llm())
        experts = [cm.load_expert(entry.folder) for entry in entries]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the espeak-ng warning: audio without speech drops colour questions
            result = evaluate_experts(cm, experts, args.items, args.seed, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        examples = check_examples(cm, experts, examples_file) if examples_file is not None else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"seed": args.seed, "items": args.items, "experts": result,
                          **({"examples": examples} if examples is not None else {})}, indent=1))
    else:
        print(format_report(result, examples))
    failed = any(r["misses"] for r in result.values()) or any(not r["right"] for r in examples or [])
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
