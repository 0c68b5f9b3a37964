"""MCUB-synth: the paper's Multimodal Commonality Understanding Benchmark, on the synthetic world.

Each item shows 3 (synth-3) or 4 (synth-4) inputs of different modalities and asks which
of four options they all have in common. Layout = the original MCUB JSON (a list of items
with `conversations` and `modal_inputs`, paths relative to the JSON file), so the same
runner scores real MCUB files; scoring reads the first letter A-D of the answer. Each
item also carries a `meta` record (options, answer category, every input's objects) that
MCUB runners ignore and `check_item_design` verifies.

Item design (why single experts fail and compositions can succeed):
- the answer X is in every input; each input shows X plus ONE distractor option, so every
  single modality leaves two options plausible (a single expert is at ≈ 50 %);
- distractors never appear in all inputs: synth-3 gives each of the 3 inputs a different
  distractor; synth-4 has 4 inputs and 3 distractors, so one distractor appears in two
  inputs, never in all four; only the combination pins X down;
- an input may also show a non-option "filler" object (never one that is in all inputs),
  colours are drawn independently per input, object order is shuffled, the answer letter
  is balanced over A-D and the answer category over all categories.

    python -m training.mcub_synth --kind synth-4 --n-items 200 --out .cache/mcub-synth

Where `python -m composition mcub --data synth-4|synth-3 --seed S --synth-items N` looks for
built sets (composition never imports training, so it only finds them; the layout is defined
once, in `composition.evaluation.synth`, and used here): the folder
`.cache/mcub-synth/seed<S>-n<N>/` of the repository, `mcub-synth4.json` and one
`mcub-synth3-<initials>.json` per synth-3 subset (`synth_sets` names this command when a
set is missing):

    python -m training.mcub_synth --kind synth-4 --seed 0 --n-items 200 --out .cache/mcub-synth/seed0-n200
    python -m training.mcub_synth --kind synth-3 --subset all --seed 0 --n-items 200 --out .cache/mcub-synth/seed0-n200
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from composition.evaluation.synth import SYNTH3_SUBSETS, SYNTH_KINDS, synth_file_name

from .instructions import LETTERS, mcub_question
from .world import CATEGORIES, EXTENSIONS, MODALITIES, Scene, SceneObject, World, render

KINDS = SYNTH_KINDS
FILLER_PROBABILITY = 0.3
DEFAULT_ITEMS = 200


def set_name(kind: str, subset: tuple[str, ...] | None) -> str:
    """'synth4', 'synth3' (all four subsets mixed) or 'synth3-iap' (one subset, by initials): the file's stem
    without its 'mcub-' prefix (the layout is ``composition.evaluation.synth``'s)."""
    return synth_file_name(kind, subset).removeprefix("mcub-").removesuffix(".json")


def _check_args(kind: str, subset: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if kind not in KINDS:
        raise ValueError(f"unknown MCUB-synth kind {kind!r}; expected one of {KINDS}")
    if subset is None:
        return None
    if kind == "synth-4":
        raise ValueError(f"synth-4 always uses all four modalities; subset={subset!r} applies to synth-3 only")
    ordered = tuple(m for m in MODALITIES if m in set(subset))
    if len(set(subset)) != 3 or ordered not in SYNTH3_SUBSETS or len(subset) != 3:
        raise ValueError(f"subset must be 3 distinct modalities of {MODALITIES}, got {subset!r}")
    return ordered


def design_item(rng: np.random.Generator, world: World, modalities: tuple[str, ...], answer: str,
                letter: str) -> dict:
    """The meta record of one item: options, answer and every input's scene.

    Args:
        modalities: the 3 or 4 inputs, in prompt order.
        answer: the category common to all inputs.
        letter: where the answer goes among the options.
    Returns:
        {"modalities", "options", "answer", "answer_category", "scenes": {modality: [[category, colour], ...]},
         "seeds": {modality: scene seed}}
    """
    others = [c for c in CATEGORIES if c != answer]
    distractors = [others[i] for i in rng.choice(len(others), size=len(LETTERS) - 1, replace=False)]
    per_input = list(distractors)
    if len(modalities) == 4:  # 4 inputs, 3 distractors: one repeats (in two inputs, never all)
        per_input.append(distractors[int(rng.integers(len(distractors)))])
    elif len(modalities) != 3:
        raise ValueError(f"an item has 3 or 4 modalities, got {modalities}")
    per_input = [per_input[i] for i in rng.permutation(len(per_input))]
    options = list(distractors)
    options.insert(LETTERS.index(letter), answer)
    fillers_pool = [c for c in CATEGORIES if c not in options]
    while True:  # a filler in every input would be a second common object: redraw
        fillers = [fillers_pool[int(rng.integers(len(fillers_pool)))] if rng.random() < FILLER_PROBABILITY else None
                   for _ in modalities]
        if not (all(fillers) and len(set(fillers)) == 1):
            break
    scenes: dict[str, Scene] = {}
    for modality, distractor, filler in zip(modalities, per_input, fillers):
        include = (answer, distractor) + ((filler,) if filler else ())
        scenes[modality] = world.sample_scene(rng, n_objects=len(include), include=include)
    meta = {"modalities": list(modalities), "options": options, "answer": letter, "answer_category": answer,
            "scenes": {m: [[o.category, o.colour] for o in s.objects] for m, s in scenes.items()},
            "seeds": {m: s.seed for m, s in scenes.items()}}
    check_item_design(meta)
    return meta


def check_item_design(item_meta: dict) -> None:
    """Raise ValueError unless an item has the MCUB-synth property.

    Checked: 4 distinct known options; the answer letter names the answer category; every
    input shows ≥ 2 options (one modality alone is ambiguous); the options shown by ALL
    inputs are exactly the answer; and no non-option object is in all inputs either.
    """
    options, letter = item_meta["options"], item_meta["answer"]
    if len(options) != len(LETTERS) or len(set(options)) != len(options) or not set(options) <= set(CATEGORIES):
        raise ValueError(f"options must be {len(LETTERS)} distinct categories of {CATEGORIES}, got {options}")
    if letter not in LETTERS or options[LETTERS.index(letter)] != item_meta["answer_category"]:
        raise ValueError(f"answer {letter!r} does not name the answer category {item_meta['answer_category']!r} "
                         f"in options {options}")
    scenes = item_meta["scenes"]
    if len(scenes) not in (3, 4):
        raise ValueError(f"an item has 3 or 4 inputs, got {sorted(scenes)}")
    common = set(CATEGORIES)
    for modality, objects in scenes.items():
        shown = {category for category, _ in objects}
        if len(shown & set(options)) < 2:
            raise ValueError(f"the {modality} shows options {sorted(shown & set(options))}: a single modality "
                             "must leave at least 2 options plausible")
        common &= shown
    if common != {item_meta["answer_category"]}:
        raise ValueError(f"the categories in all inputs are {sorted(common)}; expected exactly "
                         f"[{item_meta['answer_category']!r}]")


def _render_job(job: tuple[str, list[tuple[str, str]], int, str]) -> str:
    """Render one input (a top-level function, so a process pool can run it)."""
    modality, objects, seed, path = job
    scene = Scene(tuple(SceneObject(c, col) for c, col in objects), seed)
    return str(render(scene, modality, path))


def plan_mcub_synth(kind: str, seed: int, n_items: int = DEFAULT_ITEMS,
                    subset: tuple[str, ...] | None = None) -> list[dict]:
    """The items of an MCUB-synth set without rendering anything (what `build_mcub_synth`
    writes as JSON; the files named in `modal_inputs` do not exist yet). Arguments as there."""
    subset = _check_args(kind, subset)
    if not isinstance(n_items, int) or isinstance(n_items, bool) or n_items < 1:
        raise ValueError(f"n_items must be a positive int, got {n_items!r}")
    name = set_name(kind, subset)
    rng = np.random.default_rng([seed, KINDS.index(kind), SYNTH3_SUBSETS.index(subset) + 1 if subset else 0])
    world = World(seed)
    # Balanced answer letters and answer categories: each value equally often (±1), in seeded order.
    letters = rng.permutation(np.resize(np.arange(len(LETTERS)), n_items))
    answers = rng.permutation(np.resize(np.arange(len(CATEGORIES)), n_items))
    items = []
    for i in range(n_items):
        modalities = (tuple(MODALITIES) if kind == "synth-4"
                      else subset if subset else SYNTH3_SUBSETS[i % len(SYNTH3_SUBSETS)])
        meta = design_item(rng, world, modalities, CATEGORIES[int(answers[i])], LETTERS[int(letters[i])])
        item_id = f"{name}-{i + 1:04d}"
        question = mcub_question(meta['options'])
        items.append({"id": item_id,
                      "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": meta["answer"]}],
                      "modal_inputs": {m: f"files/{item_id}{EXTENSIONS[m]}" for m in modalities},
                      "meta": meta})
    return items


def build_mcub_synth(kind: str, seed: int, n_items: int = DEFAULT_ITEMS, out_dir: str | os.PathLike = ".cache/mcub-synth",
                     subset: tuple[str, ...] | None = None, workers: int = 1) -> Path:
    """Build an MCUB-synth set and return the path of its JSON.

    Args:
        kind: "synth-4" (image+audio+video+point) or "synth-3" (3 modalities per item).
        seed: every scene, option and letter follows from it; the same seed gives the same
            JSON and byte-identical files.
        n_items: number of items.
        out_dir: writes `<out_dir>/mcub-<name>.json` and the inputs under `<out_dir>/files/`.
        subset: synth-3 only: one of SYNTH3_SUBSETS (any order); None cycles through all four.
        workers: processes rendering files (rendering is the cost; the content does not depend on it).
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    items = plan_mcub_synth(kind, seed, n_items, subset)
    out = Path(os.fspath(out_dir))
    (out / "files").mkdir(parents=True, exist_ok=True)
    jobs = [(m, item["meta"]["scenes"][m], item["meta"]["seeds"][m], str(out / rel))
            for item in items for m, rel in item["modal_inputs"].items()]
    if workers == 1:
        for job in jobs:
            _render_job(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_render_job, jobs, chunksize=8))
    path = out / synth_file_name(kind, _check_args(kind, subset))
    path.write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
    return path


def build_all(seed: int, n_items: int = DEFAULT_ITEMS, out_dir: str | os.PathLike = ".cache/mcub-synth",
              workers: int = 1) -> dict[str, Path]:
    """synth-4 and each synth-3 subset as separate JSONs (the paper reports MCUB-3 per subset)."""
    paths = {set_name("synth-4", None): build_mcub_synth("synth-4", seed, n_items, out_dir, workers=workers)}
    for subset in SYNTH3_SUBSETS:
        paths[set_name("synth-3", subset)] = build_mcub_synth("synth-3", seed, n_items, out_dir, subset, workers)
    return paths


# The single-modality examples: fixed scenes chosen to show every renderer at its clearest.
SINGLE_EXAMPLES: tuple[tuple[str, tuple[tuple[str, str], ...], str, str], ...] = (
    ("image", (("ball", "red"), ("cube", "blue")), "Describe the image.", "A red ball and a blue cube."),
    ("audio", (("star", "green"), ("drum", "yellow")), "What objects are in the audio?", "A star and a drum."),
    ("video", (("ring", "orange"), ("cone", "purple")), "Is there a cone in the video?", "Yes."),
    ("point", (("diamond", "yellow"), ("cross", "red")), "What colour is the cross in the point cloud?", "Red."),
)


def build_examples(out_dir: str | os.PathLike = "examples", seed: int = 0, n_mcub: int = 2) -> Path:
    """Write the bundled examples and `manifest.json` (paths relative to out_dir); returns the manifest path.

    One small file per modality with a question, plus `n_mcub` MCUB-synth-4 items under
    `mcub/` (their own MCUB JSON, so the MCUB runner can evaluate them as they are).
    """
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (modality, objects, question, answer) in enumerate(SINGLE_EXAMPLES):
        scene = Scene(tuple(SceneObject(c, col) for c, col in objects), seed + i)
        name = f"{modality}-example{EXTENSIONS[modality]}"
        render(scene, modality, out / name)
        entries.append({"id": f"{modality}-example", "kind": "single", "question": question, "answer": answer,
                        "files": {modality: name}, "objects": {modality: [list(o) for o in objects]}})
    mcub_json = build_mcub_synth("synth-4", seed, n_mcub, out / "mcub")
    for item in json.loads(mcub_json.read_text(encoding="utf-8")):
        entries.append({"id": item["id"], "kind": "mcub-synth-4", "question": item["conversations"][0]["value"],
                        "answer": item["conversations"][1]["value"],
                        "files": {m: f"mcub/{p}" for m, p in item["modal_inputs"].items()},
                        "objects": item["meta"]["scenes"]})
    manifest = {"format_version": 1,
                "description": "Synthetic-world examples (training/world.py): single-modality questions and "
                               "MCUB-synth-4 items. Paths are relative to this file; `answer` is the expected answer.",
                "mcub_json": str(mcub_json.relative_to(out)), "examples": entries}
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


def score_answer(answer: str) -> str | None:
    """MCUB scoring: the first letter A-D of the answer (None when there is none)."""
    for ch in answer.strip():
        if ch in LETTERS:
            return ch
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build MCUB-synth sets (the original MCUB JSON layout).")
    parser.add_argument("--kind", choices=(*KINDS, "all"), default="all")
    parser.add_argument("--subset", default=None,
                        help="synth-3 only: e.g. image,audio,point, or 'all' for one file per subset (what "
                             "`python -m composition mcub --data synth-3` reads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-items", type=int, default=DEFAULT_ITEMS)
    parser.add_argument("--out", default=".cache/mcub-synth")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--examples", action="store_true", help="(re)write the bundled examples/ instead")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.examples:
        print(build_examples("examples", args.seed))
        return
    if args.kind == "all":
        paths = list(build_all(args.seed, args.n_items, args.out, args.workers).values())
    elif args.kind == "synth-3" and args.subset == "all":
        paths = [build_mcub_synth("synth-3", args.seed, args.n_items, args.out, subset, args.workers)
                 for subset in SYNTH3_SUBSETS]
    else:
        subset = tuple(args.subset.split(",")) if args.subset else None
        paths = [build_mcub_synth(args.kind, args.seed, args.n_items, args.out, subset, args.workers)]
    for p in paths:
        print(p)
    print(f"built in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
