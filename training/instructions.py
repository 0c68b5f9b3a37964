"""Per-modality instruction data: each expert sees only its own modality, as in the paper.

`make_instruction_items("image", n, seed, out_dir)` renders n scenes into `out_dir` and
returns one question/answer item per file:

    {"id": "image-00007", "modality": "image", "file": "image-00007.png",
     "kind": "colour", "question": "What colour is the ball in the image?", "answer": "Red."}

`file` is relative to `out_dir` (like MCUB's paths are relative to their JSON), and the
items are also written to `out_dir/instructions-<modality>.json`.

Question kinds and why they exist:
- describe / objects / colour / count / yesno: grounding (what is there, what colour, how many).
- appear: "Which of these appear in the image? A. .. D. .." with one OR two options
  present, answered with every present option ("cube (A) and star (C)"): listing all
  present options is the honest answer for one input.
- common: MCUB's own wording, "What do these inputs have in common? ... Answer with the
  option's letter.", with exactly one option present. This teaches the rule "pick the
  option the input shows". In a composition each input pushes towards the options it
  shows; only the answer is pushed by every input, so the rule carries over when experts
  are merged, while a single expert on an MCUB-synth item still sees two candidates (≈ 50 %).
  Half of the common questions in training (``MULTI_INPUT_SHARE``) show 2-4 inputs of the
  expert's own modality whose only shared category is the answer, the other options shown
  by some inputs but not all (``common_question``): the rule "pick the option every input
  shows", learned from one modality. With single-input common questions only, compositions
  named the common option of MCUB-synth-4 in 69 % of items while every single expert read
  its own input right (measured): the intersection, not perception, was what they missed.
Option answers name the option, then its letter ("star (C)"), and MCUB's first-letter
rule reads the "C". Why not the bare letter: a bare letter asks the model to recognise
the object AND look up its letter in one token; 135M-parameter experts trained for ~100
steps learned the recognition (audio: 100 % on "objects") but not the lookup (0 % on bare
letters, measured). Naming first turns the lookup into copying the letter written next
to that word in the prompt, which pretrained LMs already do well.
Answers are short and always phrased the same way, so a 135M model learns the content
rather than the style.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from modalities.checks import check_int

from .world import CATEGORIES, EXTENSIONS, LABELS, MODALITIES, NUMBER_WORDS, Scene, SceneObject, World, render

LETTERS = ("A", "B", "C", "D")
MCUB_QUESTION = "What do these inputs have in common?"
LETTER_INSTRUCTION = "Answer with the option's letter."
# Of the "common" questions in training, the share that show several inputs of the modality.
MULTI_INPUT_SHARE = 0.5
MAX_INPUTS = 4  # MCUB's largest item: image + audio + video + point
KINDS: dict[str, float] = {  # sampling weights: the option kinds carry MCUB's skill, so they weigh most
    "describe": 0.14, "objects": 0.10, "colour": 0.12, "count": 0.08,
    "yesno": 0.14, "appear": 0.20, "common": 0.22,
}


def format_options(options: list[str] | tuple[str, ...]) -> str:
    """['ball', 'car', 'drum', 'star'] -> 'A. ball B. car C. drum D. star' (MCUB's one-line style)."""
    if len(options) != len(LETTERS):
        raise ValueError(f"need exactly {len(LETTERS)} options, got {len(options)}: {options}")
    return " ".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))


def mcub_question(options: list[str] | tuple[str, ...]) -> str:
    """MCUB's question with its four options, one line: what every option question of the
    training, the lookup stage and MCUB-synth asks."""
    return f"{MCUB_QUESTION} {format_options(options)} {LETTER_INSTRUCTION}"


def option_answer(options: list[str], present: list[str]) -> str:
    """Options ['cube', 'ball', 'star', 'cone'], present ['star', 'cube'] -> 'cube (A) and star (C)'
    (in letter order)."""
    picked = sorted((options.index(c), c) for c in present)
    parts = [f"{c} ({LETTERS[i]})" for i, c in picked]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def objects_phrase(scene: Scene) -> str:
    """'A ball and a cube.' (categories only, scene order)."""
    words = [f"a {c}" for c in scene.categories]
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return text[0].upper() + text[1:] + "."


def options_with(rng: np.random.Generator, present: list[str], absent_pool: list[str]) -> tuple[list[str], list[str]]:
    """Four shuffled options: the `present` categories plus absent ones drawn from `absent_pool`;
    returns (options, letters of the present ones)."""
    need = len(LETTERS) - len(present)
    if need < 0 or need > len(absent_pool):
        raise ValueError(f"cannot build 4 options from present={present} and {len(absent_pool)} absent categories")
    absent = [absent_pool[i] for i in rng.choice(len(absent_pool), size=need, replace=False)]
    options = present + absent
    options = [options[i] for i in rng.permutation(len(options))]
    return options, [LETTERS[options.index(c)] for c in present]


def answer_order(scene: Scene, modality: str) -> tuple[SceneObject, ...]:
    """The scene's objects in the order answers name them. Image, video and point cloud have no
    natural object order, so answers use one fixed (category) order: a target the model can
    learn. Audio keeps time order."""
    if modality == "audio":
        return scene.objects
    return tuple(sorted(scene.objects, key=lambda o: CATEGORIES.index(o.category)))


def question_for(kind: str, scene: Scene, modality: str, rng: np.random.Generator,
                 colours_known: bool = True) -> tuple[str, str]:
    """(question, answer) of one kind about a scene seen in one modality.

    `colours_known=False` (audio without speech) drops colours from descriptions; the
    caller must not ask "colour" questions then.
    """
    label = LABELS[modality]
    scene = Scene(answer_order(scene, modality), scene.seed)
    absent = [c for c in CATEGORIES if c not in scene.categories]
    if kind == "describe":
        return f"Describe the {label}.", scene.describe() if colours_known else objects_phrase(scene)
    if kind == "objects":
        return f"What objects are in the {label}?", objects_phrase(scene)
    if kind == "colour":
        if not colours_known:
            raise ValueError(f"colour questions need audible colours; the {label} has none")
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        return f"What colour is the {obj.category} in the {label}?", obj.colour.capitalize() + "."
    if kind == "count":
        n = len(scene.objects)
        return f"How many objects are in the {label}?", NUMBER_WORDS[n].capitalize() + "."
    if kind == "yesno":
        if rng.random() < 0.5:
            return f"Is there a {scene.categories[int(rng.integers(len(scene.objects)))]} in the {label}?", "Yes."
        return f"Is there a {absent[int(rng.integers(len(absent)))]} in the {label}?", "No."
    if kind == "appear":
        k = 1 if len(scene.objects) == 1 else int(rng.integers(1, 3))
        present = [scene.categories[i] for i in rng.choice(len(scene.objects), size=k, replace=False)]
        options, _ = options_with(rng, present, absent)
        return f"Which of these appear in the {label}? {format_options(options)}", option_answer(options, present)
    if kind == "common":
        present = [scene.categories[int(rng.integers(len(scene.objects)))]]
        options, _ = options_with(rng, present, absent)
        return mcub_question(options), option_answer(options, present)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {tuple(KINDS)}")


def common_question(scenes: list[Scene], rng: np.random.Generator) -> tuple[str, str]:
    """MCUB's question over several inputs (scenes) whose only shared category is the answer:
    the options are the answer, up to three categories some inputs show (but not all), then
    absent ones."""
    shared = set.intersection(*(set(s.categories) for s in scenes))
    if len(scenes) < 2 or len(shared) != 1:
        raise ValueError(f"a common question needs 2+ scenes sharing exactly one category; these share {sorted(shared)}")
    answer = shared.pop()
    shown = sorted({c for s in scenes for c in s.categories} - {answer}, key=CATEGORIES.index)
    picked = [shown[i] for i in rng.choice(len(shown), size=min(3, len(shown)), replace=False)]
    absent = [c for c in CATEGORIES if all(c not in s.categories for s in scenes)]
    options, _ = options_with(rng, [answer] + picked, absent)
    return mcub_question(options), option_answer(options, [answer])


def make_instruction_items(modality: str, n: int, seed: int, out_dir: str | os.PathLike,
                           speech: bool | None = None) -> list[dict]:
    """Render n scenes of one modality into out_dir and return one instruction item per file.

    Args:
        modality: "image", "audio", "video" or "point".
        n: number of items (and files).
        seed: everything (scenes, question kinds, option orders) follows from it.
        out_dir: folder for the files and `instructions-<modality>.json`.
        speech: audio only: whether names are spoken (None: when espeak-ng is installed).
    Returns:
        Items {"id", "modality", "file" (relative to out_dir), "kind", "question", "answer"}.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    check_int(n, "n", 1)
    colours_known = True
    if modality == "audio":
        from .render_audio import speech_available

        colours_known = speech_available() if speech is None else bool(speech)
        if colours_known and not speech_available():
            raise ValueError("speech=True needs espeak-ng, which is not installed")
    kinds = [k for k in KINDS if colours_known or k != "colour"]
    weights = np.array([KINDS[k] for k in kinds])
    rng = np.random.default_rng([seed, MODALITIES.index(modality), 7])
    world = World(seed)
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        scene = world.sample_scene(rng)
        name = f"{modality}-{i:05d}{EXTENSIONS[modality]}"
        if modality == "audio" and not colours_known:
            from .render_audio import write_wav

            write_wav(scene, out / name, speech=False)
        else:
            render(scene, modality, out / name)
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        question, answer = question_for(kind, scene, modality, rng, colours_known)
        items.append({"id": f"{modality}-{i:05d}", "modality": modality, "file": name, "kind": kind,
                      "question": question, "answer": answer})
    (out / f"instructions-{modality}.json").write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
    return items
