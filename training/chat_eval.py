"""Follow-up questions on the bundled experts: a three-turn conversation about freshly rendered scenes.

    python -m training.chat_eval --experts assets/experts --seed 4040 --conversations 24 [--json]

Each conversation: turn 1 shows an image of two objects and asks about one of them, "Is there a
ball in the image?" (it is there: "Yes."); turn 2 asks "What colour is it?", which only the
conversation says is the ball; turn 3 attaches an audio clip of another object and asks "And
what is in the audio?". Every variant answers every turn after its own earlier answers
(``ComposedModel.chat``), as in the app's Chat tab. A turn is right when the answer says yes
(turn 1), names the ball's colour (turn 2) or the audio's category (turn 3).

To tell "cannot follow up" from "cannot see the colour", the colour is also asked without a
conversation, with the image: in the phrasing the experts were trained on ("What colour is the
ball in the image?") and in the follow-up's words alone ("What colour is it?", which with two
objects names one of them by chance, about half the time).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from modalities.checks import check_int

from .evaluate import normalize
from .world import World, render

TURNS = ("Is there a {category} in the image?", "What colour is it?", "And what is in the audio?")


def names(text: str, word: str) -> bool:
    return word in normalize(text).split()


def conversations(seed: int, n: int, folder: Path) -> list[dict]:
    """``n`` conversations' scenes: one image object and one audio object (another category), rendered into ``folder``."""
    world = World(seed)
    rng = np.random.default_rng([seed, 7])
    out = []
    for i in range(n):
        while True:  # two objects of different colours, so the colour names which one was meant
            picture = world.sample_scene(rng, n_objects=2)
            if picture.objects[0].colour != picture.objects[1].colour:
                break
        asked = picture.objects[int(rng.integers(2))]
        sound = world.sample_scene(rng, n_objects=1, exclude=picture.categories)
        image, audio = folder / f"image-{i:03d}.png", folder / f"audio-{i:03d}.wav"
        render(picture, "image", image)
        render(sound, "audio", audio)
        out.append({"image": image, "audio": audio, "category": asked.category, "colour": asked.colour,
                    "heard": sound.objects[0].category,
                    "other": next(o.colour for o in picture.objects if o is not asked)})
    return out


def run(cm, items: list[dict], max_new_tokens: int = 16, log=print) -> dict:
    """Per variant: the share of conversations where turns 1, 2 and 3 are right, and the colour asked alone."""
    from composition.composer import Turn
    from composition.generate import GenerationConfig
    from composition.inputs import decoder_needs, load_inputs

    generation = GenerationConfig(max_new_tokens=max_new_tokens)
    needs = decoder_needs(cm.experts.values())
    right: dict[str, list[list[bool]]] = {}
    alone: dict[str, dict[str, list[bool]]] = {}
    examples = []
    for k, item in enumerate(items):
        image, audio = load_inputs({"image": [item["image"]], "audio": [item["audio"]]}, needs)
        turns = [Turn(TURNS[0].format(category=item["category"]), (image,)), Turn(TURNS[1]), Turn(TURNS[2], (audio,))]
        answers: dict[str, list[list[int]]] = {}
        texts: dict[str, list[str]] = {}
        for t in range(1, 4):
            plan = cm.plan({i.modality for turn in turns[:t] for i in turn.inputs})
            for reply in cm.chat(turns[:t], plan, generation, answers, session=f"chat-eval-{k}"):
                name = reply.variant.name
                answers.setdefault(name, []).extend([*reply.earlier, reply.token_ids])
                texts.setdefault(name, []).extend([*(cm.decode(ids) for ids in reply.earlier), reply.text])
        cm.kv_cache.forget(f"chat-eval-{k}")
        expected = ("yes", item["colour"], item["heard"])
        for name, said in texts.items():
            right.setdefault(name, []).append([names(text, word) for text, word in zip(said, expected)])
        for phrasing, question in (("trained phrasing", f"What colour is the {item['category']} in the image?"),
                                   ("follow-up phrasing", TURNS[1])):
            for answer in cm.compare(question, [image], None, config=generation):
                alone.setdefault(answer.name, {}).setdefault(phrasing, []).append(names(answer.answer, item["colour"]))
        if k < 2:
            examples.append({"scene": {"image": f"a {item['colour']} {item['category']} and a {item['other']} object",
                                       "audio": f"a {item['heard']}"}, "turns": [t.text for t in turns], "answers": texts})
        log(f"[{k + 1}/{len(items)}] {item['colour']} {item['category']} (+ a {item['other']} one) + {item['heard']}")
    share = lambda xs: round(sum(xs) / len(xs), 3) if xs else None  # noqa: E731
    table = {}
    for name, rows in right.items():
        table[name] = {"conversations": len(rows), "turn1_yes": share([r[0] for r in rows]),
                       "turn2_followup_colour": share([r[1] for r in rows if len(r) > 1]),
                       "turn3_new_audio": share([r[2] for r in rows if len(r) > 2]),
                       "colour_alone_trained_phrasing": share(alone.get(name, {}).get("trained phrasing", [])),
                       "colour_alone_followup_phrasing": share(alone.get(name, {}).get("follow-up phrasing", []))}
    return {"turns": list(TURNS), "variants": table, "examples": examples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", nargs="+", default=None, help="expert folders (default: the bundled experts)")
    parser.add_argument("--seed", type=int, default=4040)
    parser.add_argument("--conversations", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    check_int(args.conversations, "--conversations", 1)
    from composition.base_llm import load_base_llm
    from composition.composer import ComposedModel
    from composition.discovery import scan_experts

    cm = ComposedModel(load_base_llm())
    for entry in scan_experts(args.experts):
        cm.load_expert(entry.folder)
    with tempfile.TemporaryDirectory(prefix="chat-eval-") as folder:
        items = conversations(args.seed, args.conversations, Path(folder))
        result = run(cm, items, args.max_new_tokens, log=lambda line: print(line, flush=True) if not args.json else None)
    result.update({"seed": args.seed, "command": "python -m training.chat_eval " + " ".join(argv or [])})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        columns = ("turn1_yes", "turn2_followup_colour", "turn3_new_audio", "colour_alone_trained_phrasing",
                   "colour_alone_followup_phrasing")
        print(f"{'variant':<22}" + "".join(f"{c:>34}" for c in columns))
        for name, row in result["variants"].items():
            print(f"{name:<22}" + "".join(f"{'' if row[c] is None else row[c]:>34}" for c in columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
