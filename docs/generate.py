"""Rewrite the generated tables of docs/*.md from the JSON files that hold their figures.

    .venv/bin/python docs/generate.py           # rewrite every generated table in place
    .venv/bin/python docs/generate.py --check   # exit 1, naming the doc and table, when a doc differs

A generated table sits between two marker comments in a doc:

    <!-- generated:NAME -->
    ...written by TABLES[NAME]; edits here are overwritten...
    <!-- /generated -->

Every table ends with a line naming its JSON file and the command that wrote it. The figures
come from `docs/data/*.json` (`docs/data/runs.json` records each file's command, date and wall
time), `assets/experts/training_report.json` and `assets/figures/curves-*.json`.

To re-measure: run the command of the table's source line, write its JSON over the old file,
update its entry in `runs.json`, run this script, and reread the prose around the table.
To add a table: write a function `(sources) -> list of Markdown lines` below, name it in
TABLES, and put its markers in a doc. A marker with no function, or a JSON file that is
missing or half written, fails `--check` (that table is left as it was). Markers spelled
`<!-- pending-generated:NAME -->` are not touched: a table whose measurement is still running.
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
MARKER = re.compile(r"(<!-- generated:([\w-]+) -->\n)(.*?)(<!-- /generated -->)", re.S)

KINDS = ("describe", "objects", "colour", "count", "yesno", "appear", "common")
KIND_LABELS = {"yesno": "yes/no"}
MODALITIES = ("image", "audio", "video", "point")
SUBSETS = {"iav": ("image", "audio", "video"), "iap": ("image", "audio", "point"),
           "ivp": ("image", "video", "point"), "avp": ("audio", "video", "point")}


class Sources:
    """Reads the JSON files; `docs` holds docs/data, `repo` holds assets/ (tests point them at copies)."""

    def __init__(self, docs: Path = DOCS, repo: Path = REPO) -> None:
        self.docs, self.repo = docs, repo

    def json(self, name: str):
        """`data/X.json` is read under docs, anything else (`assets/...`) under the repository."""
        base = self.docs if name.startswith("data/") else self.repo
        try:
            return json.loads((base / name).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} is not JSON (empty or half written?): {exc}") from None

    def source(self, name: str, what: str = "") -> str:
        """The line under a table: its file, the command that wrote it, when and how long it took
        (from runs.json; else the file's own `command` field, if it has one)."""
        run = self.json("data/runs.json").get(name.removeprefix("data/"))
        if run is None:
            command = self.json(name).get("command")
            return (f"_{what}Source: `docs/{name}`" + (f", written by `{command.strip()}`" if command else "")
                    + " (not recorded in `docs/data/runs.json`)._")
        took = f", {_duration(run['seconds'])}" if run.get("seconds") is not None else ""
        note = f"; {run['note']}" if run.get("note") else ""
        return (f"_{what}Source: `docs/{name}`, written by `{run['command']}` "
                f"({run['date']}{took}{note})._")


# --- formatting ----------------------------------------------------------------------

def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; a `|` inside a cell is escaped."""
    def line(cells: list) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), "|" + "---|" * len(header)] + [line(row) for row in rows]


def _f(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _sources_list(lines: list[str]) -> list[str]:
    """Several source lines under one table, as a list."""
    return [f"- {line}" for line in lines]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _expert_order(name: str) -> tuple:
    """image, image-shared, audio, audio-shared, ... (the modalities' order, decoupled first)."""
    return MODALITIES.index(name.split("-")[0]), name


def _best(values: dict[str, float]) -> set[str]:
    top = max(values.values())
    return {k for k, v in values.items() if v == top}


def _bold_if(text: str, flag: bool) -> str:
    return f"**{text}**" if flag else text


def _method_label(sources: Sources, name: str) -> str:
    """`ties` -> TIES, `ties@core` -> TIES @core, `expert:image` -> image: the registry's labels."""
    labels = {m["name"]: m["label"] for m in sources.json("data/methods-registry.json")["methods"]}
    labels.update(NaiveMC="NaiveMC", DAMC="DAMC")
    if name.startswith("expert:"):
        return name.removeprefix("expert:")
    base, _, space = name.partition("@")
    return labels.get(base, base) + (f" @{space}" if space else "")


# --- bundled experts: the build ------------------------------------------------------

def _report(sources: Sources) -> dict:
    return sources.json("assets/experts/training_report.json")


def _report_source(what: str = "") -> str:
    return (f"_{what}Source: `assets/experts/training_report.json`, written by `python -m training.build_experts` "
            "(the build and its two partial rebuilds)._")


def recipe(sources: Sources) -> list[str]:
    """The recipe the bundled experts were built with (the newest part's config)."""
    report = _report(sources)
    c = report["point_rebuild"]["config"]
    scale = dict(c.get("stage0_scale_by_modality", []))
    stage0 = f"{c['stage0_steps']} steps of batch {c['stage0_batch_size']}, lr {c['lr_stage0']:g}" + "".join(
        f"; {m}: {k} × as many" for m, k in scale.items())
    rows = [
        ["training scenes per modality", report["n_scenes"]],
        ["point encoder pre-training (point clouds only, no LLM pass)",
         f"{c['point_pretrain_steps']} steps of batch {c['point_pretrain_batch_size']}, lr {c['lr_point_pretrain']:g}"],
        ["stage 0: slot reader (no LLM pass)", stage0],
        ["stage 1: boundary tokens", f"{c['stage1_steps']} steps of batch {c['batch_size']}, lr {c['lr_tokens']:g}"],
        ["stage 2: LoRA + boundary tokens",
         f"{c['stage2_steps']} steps of batch {c['batch_size']}, lr {c['lr_lora']:g}, {c['warmup_steps']} warm-up steps"],
        ["stage 3: option-letter lookup (text only)",
         f"{c['stage3_steps']} steps of batch {c['stage3_batch_size']}, lr {c['lr_stage3']:g}"],
        ["LoRA", f"r = {c['rank']}, alpha = {c['alpha']:g} on q, k, v, o"],
        ["boundary tokens", f"{c['prefix_tokens']} prefix + {c['suffix_tokens']} suffix"],
        ["row-weighted stage-2 loss, stage-3 replay", ", ".join(c.get("row_weighted", [])) + " experts"],
        ["question kinds", ", ".join(KIND_LABELS.get(k, k) for k in c["kinds"])],
        ["seed, threads, device", f"{c['seed']}, {report['threads']}, {report['device']}"],
    ]
    return _table(["setting", "value"], rows) + ["", _report_source()]


def build_parts(sources: Sources) -> list[str]:
    """Which build made which bundled expert, and the wall time of each rebuild."""
    report = _report(sources)
    rebuilt = {name: part for part in ("shared_rebuild", "point_rebuild") for name in report[part]["experts"]}
    first = [n for n in report["experts"] if n not in rebuilt]
    rows = [["first build", ", ".join(sorted(first, key=_expert_order)), "(not kept in the report)",
             "the recipe above without the two changes below"]]
    for part in ("shared_rebuild", "point_rebuild"):
        p = report[part]
        kept = [n for n in p["experts"] if rebuilt[n] == part]
        rows.append([f"`{part}`", ", ".join(kept) + (f" (rebuilt again later: "
                     f"{', '.join(n for n in p['experts'] if n not in kept)})" if len(kept) < len(p["experts"]) else ""),
                     " and ".join(f"{s:.0f} s" for s in p["seconds"]) + " (parallel processes)", p["why"]])
    return _table(["part", "bundled experts it made", "wall time", "what it changed"], rows) + ["", _report_source()]


def stage_minutes(sources: Sources) -> list[str]:
    """Minutes per stage and expert, as recorded by the build that made each expert."""
    seconds = _report(sources)["seconds"]
    experts = _report(sources)["experts"]
    rows = []
    for name in sorted(experts, key=_expert_order):
        modality = name.split("-")[0]
        per_step = [log[-1]["seconds"] / log[-1]["step"] for log in (experts[name]["stage2"], experts[name]["stage3"])]
        rows.append([name, _f(seconds[f"{modality}/stage1"] / 60, 1) if name == modality else "—",
                     _f(seconds[f"{name}/stage2"] / 60, 1), _f(per_step[0], 1),
                     _f(seconds[f"{name}/stage3"] / 60, 1), _f(per_step[1], 1), _f(seconds[f"{name}/eval"] / 60, 1)])
    return (_table(["expert", "stages 0–1, min (once per modality)", "stage 2, min", "s per stage-2 step",
                    "stage 3, min", "s per stage-3 step", "scoring, min"], rows)
            + ["", _report_source("One thread per process. ")])


def slot_reader(sources: Sources) -> list[str]:
    """What stage 0 alone reads on held-out scenes, recorded by the build (and the point encoder's pre-training)."""
    experts = _report(sources)["experts"]
    rows = []
    for m in MODALITIES:
        log = experts[m]["stage1"]
        held = next(e["stage0_heldout"] for e in log if "stage0_heldout" in e)
        steps = max(e["stage0_step"] for e in log if "stage0_step" in e)
        stage0_s = max(e["seconds"] for e in log if "stage0_step" in e)
        pre = next((e["pretrain_heldout_exact_set"] for e in log if "pretrain_heldout_exact_set" in e), None)
        pre_log = [e for e in log if "pretrain_step" in e]
        rows.append([m, f"{steps} ({stage0_s / steps:.3f} s per step)", _f(held["scene"], 3), _f(held["token"], 3),
                     _f(held["categories"], 3),
                     f"categories {_f(pre['category'], 3)}, colours {_f(pre['colour'], 3)} after {pre_log[-1]['pretrain_step']} "
                     f"steps ({pre_log[-1]['seconds'] / pre_log[-1]['pretrain_step']:.2f} s per step)" if pre else ""])
    return (_table(["modality", "stage-0 steps", "every slot of a scene right", "tokens right", "categories right",
                    "point encoder pre-training: exact set"], rows)
            + ["", _report_source("Held-out scenes of the build (seed 1000). ")])


def build_heldout(sources: Sources) -> list[str]:
    """The build's own held-out score per expert (42 scenes of seed 1000, 6 per question kind)."""
    experts = _report(sources)["experts"]
    names = sorted(experts, key=_expert_order)
    rows = [[n, *(_f(experts[n]["heldout"][k]) for k in KINDS), f"**{experts[n]['heldout']['overall']:.3f}**"]
            for n in names]
    return (_table(["expert", *(KIND_LABELS.get(k, k) for k in KINDS), "overall"], rows)
            + ["", _report_source("42 held-out scenes of seed 1000 per modality, scored at the end of the build. ")])


# --- bundled experts: measured after the build --------------------------------------

def _heldout(sources: Sources, seed: int) -> list[str]:
    name = f"data/heldout-seed{seed}.json"
    d = sources.json(name)
    rows = []
    for expert, r in sorted(d["experts"].items(), key=lambda item: _expert_order(item[0])):
        a = r["accuracy"]
        verdict = "met" if not r["misses"] else "missed: " + "; ".join(r["misses"])
        rows.append([expert, *(_f(a.get(k)) for k in KINDS), f"**{a['overall']:.3f}**", verdict])
    per_kind = d["items"] // len(KINDS)
    return (_table(["expert", *(KIND_LABELS.get(k, k) for k in KINDS), "overall",
                    "targets (decoupled ≥ 0.8, shared ≥ 0.7, every kind ≥ 0.5)"], rows)
            + ["", sources.source(name, f"{d['items']} fresh scenes per modality, {per_kind} per question kind "
                                        f"(one answer moves a cell by {1 / per_kind:.3f}). ")])


def heldout_seed90210(sources: Sources) -> list[str]:
    return _heldout(sources, 90210)


def heldout_seed31337(sources: Sources) -> list[str]:
    return _heldout(sources, 31337)


def examples(sources: Sources) -> list[str]:
    """The single-modality examples of examples/manifest.json, asked of both experts of their modality."""
    name = "data/heldout-seed90210.json"
    rows = [[r["example"], f"“{r['question']}”", f"“{r['expected']}”", r["expert"], f"“{r['answer']}”",
             "yes" if r["right"] else "**no**"] for r in sources.json(name)["examples"]]
    return _table(["example", "question", "expected", "expert", "answer", "exactly right"], rows) + [
        "", sources.source(name, "The same run as the seed-90210 table (`--examples`). ")]


def lookup(sources: Sources) -> list[str]:
    """The option-letter lookup alone: text only, is the next token the letter before the given name?"""
    name = "data/lookup.json"
    d = sources.json(name)
    composed = [k for k in d if not k.startswith("expert:")]
    lines = _table(["base LLM alone" if k == "base" else _method_label(sources, k) for k in composed],
                   [[_f(d[k]) for k in composed]])
    rows = [[kind, *(_f(d.get(f"expert:{m}{suffix}")) for m in MODALITIES)]
            for kind, suffix in (("decoupled expert", ""), ("shared expert", "-shared"))]
    return lines + ["", *_table(["single expert", *MODALITIES], rows), "",
                    sources.source(name, "48 text-only questions. ")]


def _question(sources: Sources, name: str) -> str:
    """The --question of the command that wrote `name` (runs.json)."""
    args = shlex.split(sources.json("data/runs.json")[name.removeprefix("data/")]["command"])
    return args[args.index("--question") + 1]


def _answers(d: dict) -> dict[str, str]:
    """Each variant's answer on one line, with Markdown's emphasis marks escaped."""
    return {v["name"]: re.sub(r"([*_`<])", r"\\\1", " ".join(v["answer"].split())) for v in d["variants"]}


CHAT = [f"data/chat/chat-{i}.json" for i in range(1, 6)]


def chat(sources: Sources) -> list[str]:
    """General questions without any input: the base alone and the compositions, greedy, 48 new tokens at most."""
    answers = {name: _answers(sources.json(name)) for name in CHAT}
    variants = list(answers[CHAT[0]])
    rows = [[f"“{_question(sources, name)}”", *(f"“{answers[name][v]}”" for v in variants)] for name in CHAT]
    first = sources.json("data/runs.json")[CHAT[0].removeprefix("data/")]
    command = first["command"].replace(shlex.quote(_question(sources, CHAT[0])), "Q").replace(
        f'"{_question(sources, CHAT[0])}"', "Q")
    took = sum(sources.json("data/runs.json")[n.removeprefix("data/")]["seconds"] for n in CHAT)
    return (_table(["question", *("base LLM alone" if v == "base" else _method_label(sources, v) for v in variants)],
                   rows)
            + ["", f"_Source: `docs/data/chat/chat-1.json` … `chat-5.json`, one per question, written by `{command}` "
                   f"({first['date']}, {_duration(took)} in all; {first['note']})._"])


def mixed_example(sources: Sources) -> list[str]:
    """The app's mixed example: the bundled image and audio examples, one question."""
    name = "data/chat/mixed-example.json"
    answers = _answers(sources.json(name))
    rows = [[_method_label(sources, v), f"“{a}”"] for v, a in answers.items()]
    return _table(["variant", f"answer to “{_question(sources, name)}”"], rows) + ["", sources.source(name)]


def _mcub_accuracy(sources: Sources, names: list[str]) -> tuple[dict[str, float], dict]:
    accuracy, first = {}, None
    for name in names:
        d = sources.json(name)
        first = first or d
        accuracy.update(d["accuracy"])
    return accuracy, first


SYNTH4 = ["data/mcub-synth4-seed2718-decoupled.json", "data/mcub-synth4-seed2718-shared.json"]
SYNTH4_STATS = "data/mcub-synth4-seed2718-stats.json"  # the paired statistics of every synth-4 run's predictions


def _stats(sources: Sources, name: str) -> dict:
    return sources.json(name)["statistics"]


def _ci(stats: dict, variant: str) -> str:
    lo, hi = stats["variants"][variant]["ci95"]
    return f"{_f(lo)}–{_f(hi)}"


def _pair(stats: dict, a: str, b: str) -> dict:
    """The paired comparison of a and b (right only with a / only with b, McNemar p), whichever order it was stored in."""
    for p in stats["pairs"]:
        if (p["a"], p["b"]) == (a, b):
            return p
        if (p["a"], p["b"]) == (b, a):
            return {**p, "a": a, "b": b, "only_a": p["only_b"], "only_b": p["only_a"], "difference": -p["difference"]}
    raise KeyError(f"no paired comparison of {a} and {b}")


def _pair_text(sources: Sources, stats: dict, a: str, b: str) -> str:
    p = _pair(stats, a, b)
    return (f"{_method_label(sources, a)} against {_method_label(sources, b)}: {p['only_a']} items right only with "
            f"{_method_label(sources, a)}, {p['only_b']} only with {_method_label(sources, b)}, exact McNemar "
            f"p = {p['p_value']:.2g}")


def mcub_synth4(sources: Sources) -> list[str]:
    """MCUB-synth-4 accuracy: the compositions, then each single expert."""
    accuracy, d = _mcub_accuracy(sources, SYNTH4)
    compositions = {k: v for k, v in accuracy.items() if not k.startswith("expert:")}
    experts = {k.removeprefix("expert:"): v for k, v in accuracy.items() if k.startswith("expert:")}
    top_c, top_e = _best(compositions), _best(experts)
    order = sorted(compositions, key=lambda k: (k not in ("NaiveMC", "DAMC"), k != "NaiveMC"))
    stats = _stats(sources, SYNTH4_STATS)
    lines = _table(["", *(_method_label(sources, k) for k in order)],
                   [["accuracy", *(_bold_if(_f(compositions[k], 3), k in top_c) for k in order)],
                    ["95 % interval", *(_ci(stats, k) for k in order)]])
    rows = [[kind, *(_bold_if(_f(experts[n], 3), n in top_e) + f" ({_ci(stats, 'expert:' + n)})" if n in experts else ""
                     for n in (f"{m}{suffix}" for m in MODALITIES))]
            for kind, suffix in (("decoupled expert", ""), ("shared expert", "-shared"))]
    lines += ["", *_table(["single expert (95 % interval)", *MODALITIES], rows), ""]
    best = "expert:" + max(experts, key=experts.get)
    lines += [f"Paired, on the same {stats['variants']['DAMC']['items']} items: "
              + "; ".join(_pair_text(sources, stats, "DAMC", b) for b in ("NaiveMC", best)) + ".", ""]
    return lines + _sources_list([sources.source(n, f"{sources.json(n)['items']} items, seed 2718. ") for n in SYNTH4]
                                 + [sources.source(SYNTH4_STATS, "Intervals and paired tests: ")])


def mcub_synth4_answers(sources: Sources) -> list[str]:
    """The same answers split into the option they name and the letter they write."""
    name = "data/mcub-synth4-seed2718-answers.json"
    d = sources.json(name)
    order = sorted(d, key=lambda v: (v.startswith("expert:"), _expert_order(v[7:]) if v.startswith("expert:") else
                                    (v not in ("NaiveMC", "DAMC"), v != "NaiveMC")))
    rows = [[_method_label(sources, v), _f(d[v]["letter"], 3), _f(d[v]["named"], 3), _f(d[v]["agree"], 3)] for v in order]
    return (_table(["variant", "letter right (the MCUB score)", "named the answer", "letter = the named option's"], rows)
            + ["", sources.source(name)])


def mcub_synth3(sources: Sources) -> list[str]:
    """MCUB-synth-3: one row per 3-modality subset; single experts only where their modality is in it."""
    rows, notes = [], []
    for key, subset in SUBSETS.items():
        name = f"data/mcub-synth3-{key}-seed2718.json"
        d = sources.json(name)
        a = d["accuracy"]
        experts = {k.removeprefix("expert:"): v for k, v in a.items() if k.startswith("expert:")}
        top = max(experts.values())
        best = ", ".join(n for n, v in experts.items() if v == top)
        per_modality = [f"{_f(experts[m])} / {_f(experts[m + '-shared'])}" if m in subset else ""
                        for m in MODALITIES]
        stats_name = f"data/mcub-synth3-{key}-seed2718-stats.json"
        stats = _stats(sources, stats_name)
        pair = _pair(stats, "DAMC", "NaiveMC")
        rows.append([" + ".join(subset), d["items"], f"{_f(a['NaiveMC'])} ({_ci(stats, 'NaiveMC')})",
                     f"{_f(a['DAMC'])} ({_ci(stats, 'DAMC')})", f"{pair['only_a']} / {pair['only_b']}, p = {pair['p_value']:.2g}",
                     _f(a["ties"]), f"{_f(top)} ({best})", *per_modality])
        notes += [sources.source(name), sources.source(stats_name)]
    header = ["subset", "items", "NaiveMC (95 % interval)", "DAMC (95 % interval)",
              "right only DAMC / only NaiveMC, McNemar", "TIES", "best single expert",
              *(f"{m} (decoupled / shared)" for m in MODALITIES)]
    return _table(header, rows) + [""] + _sources_list(notes)


# --- conversations (docs/chat.md) --------------------------------------------------

def chat_followups(sources: Sources) -> list[str]:
    """Three-turn conversations on fresh scenes (training.chat_eval): each turn's exact-match rate per variant."""
    name = "data/chat-followups-seed4040.json"
    d = sources.json(name)
    first, second, third = d["turns"]
    keys = ("turn1_yes", "turn2_followup_colour", "turn3_new_audio", "colour_alone_trained_phrasing",
            "colour_alone_followup_phrasing")
    rows = [[_method_label(sources, v), r["conversations"], *(_f(r[k], 3) if r[k] is not None else "—" for k in keys)]
            for v, r in d["variants"].items()]
    return (_table(["variant", "conversations", f"turn 1: “{first}”", f"turn 2: “{second}”", f"turn 3: “{third}”",
                    "the colour asked alone, naming the object", "the colour asked alone: “What colour is it?”"], rows)
            + ["", sources.source(name, f"Seed {d['seed']}; — = not asked (no image). ")])


def chat_reuse(sources: Sources) -> list[str]:
    """Seconds per turn of one conversation, with the KV cache of earlier turns reused and with a full prefill."""
    name = "data/bench-chat.json"
    d = sources.json(name)
    c = d["chat"]
    rows = [[turn, _f(full, 1), _f(reuse, 1)]
            for turn, (full, reuse) in enumerate(zip(c["per_turn_full_s"], c["per_turn_reuse_s"]), start=1)]
    return (_table(["turn", "full prefill, s", "KV cache reused, s"], rows)
            + ["", f"Turn {c['turns']}: {c['turn5_prompt_tokens']} prompt tokens, {c['turn5_reused_tokens']} of them "
                   f"reused and {c['turn5_prefilled_tokens']} prefilled ({c['prefill_tokens_saved_share']:.0%} of the "
                   f"prefill saved); a full prefill takes {c['turn5_full_vs_reuse']:.2f}× the time of reuse. "
                   f"{len(c['variants'])} variants ({', '.join(_method_label(sources, v) for v in c['variants'])}), "
                   f"{c['new_tokens']} new tokens per turn.",
               "", sources.source(name, f"{d.get('setup', '')}; {d['cpu_threads']} thread"
                                        f"{'s' * (d['cpu_threads'] > 1)}, {d['device'].upper()}. ")])


# --- history: the stage-2 curves of earlier recipes ----------------------------------

CURVES = ("image-decoupled", "image-schedule-batch", "image-long", "image-scenes-long", "audio-decoupled",
          "audio-long", "video-decoupled", "point-decoupled", "image-slots", "point-shared")


def curves(sources: Sources) -> list[str]:
    """Held-out exact match at each stage-2 checkpoint, one row per curve run and variant."""
    rows = []
    for key in CURVES:
        d = sources.json(f"assets/figures/curves-{key}.json")
        reader = "slot reader" if "stage0_batch_size" in d["recipe"] else "linear"
        for variant, v in d["variants"].items():
            points = ", ".join(f"{p['step']}: {p['accuracy']['overall']:.2f}" for p in v["points"])
            rows.append([f"[{key}](../assets/figures/curves-{key}.png)", f"{d['modality']} {d['training']}", reader,
                         d["train_scenes"], f"{d['heldout_items']} (seed {d['heldout_seed']})", variant, points,
                         f"{_duration(d['total_seconds'])}, {d['threads']} thread{'s' * (d['threads'] > 1)}"])
    return (_table(["run (plot)", "expert", "projector", "training scenes", "held-out scenes", "variant",
                    "overall at step", "wall time"], rows)
            + ["", "_Source: `assets/figures/curves-*.json`; each file's `command` field holds the "
                   "`python -m training.curves ...` line that wrote it._"])


# --- merge methods ---------------------------------------------------------------------

def methods_registry(sources: Sources) -> list[str]:
    """The registry: one row per method, by group."""
    name = "data/methods-registry.json"
    d = sources.json(name)
    rows = []
    for group, label in d["groups"].items():
        for m in (m for m in d["methods"] if m["group"] == group):
            params = ", ".join(f"`{p['name']}` {_num(p['default'])} ({_num(p['minimum'])}–{_num(p['maximum'])})"
                               for p in m["params"])
            renamed = "".join(f"; `{r['old']}` still accepted ({r['rule']})" for r in m["renamed"])
            layers = "yes" if m["per_layer_weights"] else "no"
            if "normalized" in m["per_layer_note"]:
                layers += ", normalized per layer"
            rows.append([label, f"`{m['name']}`", m["label"],
                         m["formula"], (params or "—") + renamed, ", ".join(m["spaces"]), layers])
    return (_table(["group", "name", "label", "formula", "hyper-parameters: default (range)", "spaces",
                    "λ over layers"], rows)
            + ["", sources.source(name, "NaiveMC and DAMC are the engine's own variants, not registry entries. ")])


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2 ** 20:.1f}"


def methods_cost(sources: Sources) -> list[str]:
    """Seconds and MiB per merge method, dense beside core space, after the plain loop of the same run."""
    name = "data/bench-methods.json"
    f = sources.json(name)["methods"]
    plain = f["plain_loop"]
    rows = [["plain loop Σ λ_i·B_i·A_i", _f(plain["seconds"], 3), _mib(plain["peak_bytes"]),
             _mib(plain["result_bytes"]), "", "", ""]]
    for method, spaces in f["methods"].items():
        d, c = spaces.get("dense"), spaces.get("core")
        ratio = f"{d['seconds'] / c['seconds']:.1f}×" if d and c and c["seconds"] > 0 else ""
        rows.append([f"`{method}`", *(_f(x["seconds"], 3) if x else "—" for x in (d,)),
                     _mib(d["peak_bytes"]) if d else "—", _mib(d["result_bytes"]) if d else "—",
                     _f(c["seconds"], 3) if c else "—", _mib(c["result_bytes"]) if c else "—", ratio])
    return (_table(["method", "dense s", "dense peak MiB", "dense result MiB", "core s", "core result MiB",
                    "dense ÷ core time"], rows)
            + ["", sources.source(name, f"{f['device'].upper()}: {f['scaling']}. ")])


METHOD_RUNS = SYNTH4 + [f"data/mcub-synth4-seed2718-methods-{part}.json" for part in "abc"]
METHOD_ANSWERS = ["data/mcub-synth4-seed2718-answers.json", "data/mcub-synth4-seed2718-methods-answers.json"]


def methods_synth4(sources: Sources) -> list[str]:
    """Every merge method on MCUB-synth-4 with the bundled experts, beside what its merge does to the
    experts' mean text delta θ₀ (training.diagnose merge), best first."""
    accuracy, _ = _mcub_accuracy(sources, METHOD_RUNS)
    stats = _stats(sources, SYNTH4_STATS)
    answers = {}
    for name in METHOD_ANSWERS:
        answers.update(sources.json(name))
    rows = []
    for variant, score in sorted(accuracy.items(), key=lambda kv: -kv[1]):
        if variant.startswith("expert:"):
            continue
        method, _, space = variant.partition("@")
        default_space = {m["name"]: m["spaces"][0] for m in sources.json("data/methods-registry.json")["methods"]}
        geometry = {"DAMC": "data/merge/task_arithmetic-dense.json"}.get(
            variant, f"data/merge/{method}-{space or default_space.get(method, 'dense')}.json" if method != "NaiveMC" else None)
        g = sources.json(geometry)["mean"] if geometry else None
        a = answers[variant]
        label = _method_label(sources, variant) + (" (= task arithmetic)" if variant == "DAMC" else "")
        versus = "" if variant == "DAMC" else (lambda p: f"{p['only_a']} / {p['only_b']}, p = {p['p_value']:.2g}")(
            _pair(stats, variant, "DAMC"))
        rows.append([label, _f(score, 3), _ci(stats, variant), versus, _f(a["named"], 3), _f(a["agree"], 3),
                     *([_f(g["relative_change"]), _f(g["cosine"]), _f(g["outside"]), f"{g['rank']:.0f}"] if g
                       else ["—"] * 4)])
    best = max(v for k, v in accuracy.items() if k.startswith("expert:"))
    rows.append(["best single expert", _f(best, 3), "", "", "", "", "", "", "", ""])
    lines = _table(["variant", "MCUB-synth-4", "95 % interval", "right only here / only DAMC, McNemar",
                    "named the answer", "letter = named option's", "moved", "cosine with θ₀", "outside the subspaces",
                    "rank"], rows)
    merge = sources.json("data/runs.json")["merge"]
    return lines + ["", *_sources_list([*(sources.source(n) for n in METHOD_RUNS[2:] + METHOD_ANSWERS[1:]),
                    f"_Geometry source: `docs/data/merge/<method>-<space>.json`, written by `{merge['command']}` "
                    f"({merge['date']}, {merge['note']})._"])]


# --- performance -----------------------------------------------------------------------

def bench_side_by_side(sources: Sources) -> list[str]:
    """All variants in one batch against one variant and against the variants one by one."""
    name = "data/bench.json"
    d = sources.json(name)
    rows = []
    for key, target in (("side_by_side_one_input", "side_by_side_one_input"),
                        ("side_by_side_all_inputs", "side_by_side_all_inputs")):
        s = d[key]
        rows.append([f"{len(s['inputs'])} input{'s' * (len(s['inputs']) > 1)}, {len(s['variants'])} variants",
                     f"{s['batched_s']:.1f} s", f"{s['one_variant_s']:.1f} s ({s['one_variant']})",
                     f"{s['ratio_vs_one']:.2f}× (target ≤ {d['targets'][target]:g}×"
                     + (f"; ≤ {d['targets'][target + '_seconds']:g} s in all)" if target + "_seconds" in d["targets"] else ")"),
                     f"{s['prefill_floor']:.2f}× (padded: {s['padded_prefill_ratio']:.2f}×)",
                     f"{s['sequential_s']:.1f} s ({s['ratio_vs_sequential']:.2f}×)"])
    return (_table(["figure", "one batch", "one variant", "batch ÷ one variant", "prefill floor",
                    "one by one (batch ÷ it)"], rows)
            + ["", sources.source(name, f"{d['setup']}; {d['new_tokens']} new tokens, {d['cpu_threads']} "
                                        f"thread{'s' * (d['cpu_threads'] > 1)}, "
                                        f"median of {d['repeats']} after {d['warmup']} warm-up. ")])


def bench_recompose(sources: Sources) -> list[str]:
    """Recomposition online and materialized, each beside its baseline."""
    name = "data/bench.json"
    d = sources.json(name)
    o, m = d["recompose_online"], d["recompose_materialized"]
    rows = [
        ["online recomposition (plan + coefficient table)", f"{o['seconds'] * 1e3:.2f} ms",
         f"{o['variants']} variants, table {' × '.join(map(str, o['table_shape']))}"],
        [f"materialize {m['variant']} ({m['experts']} experts, {m['layers']} layers)", f"{m['seconds'] * 1e3:.0f} ms",
         f"plain loop {m['plain_loop_s'] * 1e3:.0f} ms ({m['ratio_vs_plain_loop']:.2f}×); "
         f"memory floor {m['memory_floor_s'] * 1e3:.0f} ms ({m['ratio_vs_floor']:.2f}×); "
         "largest difference from the loop " + (f"{m['max_abs_diff_vs_plain_loop']:.1e}"
                                                 if m["max_abs_diff_vs_plain_loop"] else "< 1e-6")],
    ]
    gpu, t = d.get("gpu", {}), d["targets"]
    if "skipped" in gpu:
        rows.append(["GPU section (7B-shaped)", "not run", f"{gpu['skipped']}; its targets: 6 rows ≤ "
                     f"{t['side_by_side_gpu']:g}× one row, materialize ≤ {t['materialize_gpu_ms']:g} ms, "
                     f"decode ≤ {t['decode_vs_floor']:g}× the memory floor"])
    return _table(["figure", "measured", "baseline in the same run"], rows) + ["", sources.source(name)]


def bench_schedules(sources: Sources) -> list[str]:
    """A coefficient change with λ schedules against one with numbers, and DAMC's decode with each."""
    name = "data/bench-online.json"
    d = sources.json(name)
    o = d["recompose_online"]
    rows = [["coefficient change (plan + coefficient table)", f"{o['seconds'] * 1e3:.2f} ms",
             f"{o['schedule_seconds'] * 1e3:.2f} ms", f"{o['schedule_vs_scalar']:.2f}×"],
            ["table shape", " × ".join(map(str, o["table_shape"])), " × ".join(map(str, o["schedule_table_shape"])), ""],
            ["DAMC decode, per token", f"{o['decode_ms_scalar']:.1f} ms", f"{o['decode_ms_schedule']:.1f} ms",
             f"{o['decode_schedule_vs_scalar']:.2f}×"]]
    return (_table(["figure", "λ numbers", "λ schedules", "schedules ÷ numbers"], rows)
            + ["", f"{o['variants']} variants recomposed; each timed change sets other values. "
                   + sources.source(name, f"{d.get('setup', '')}; {d['cpu_threads']} thread"
                                          f"{'s' * (d['cpu_threads'] > 1)}, {d['device'].upper()}. ")])


def _study_rows(d: dict) -> list[list]:
    rows = []
    for schedule, e in d["schedules"].items():
        vs = e.get("vs_scalar")
        lam = next(iter(e["coefficients"]["lambdas"].values()))
        rows.append([schedule, _lambda_text(lam), f"{d.get('scale', 1):g}", _f(e["accuracy"], 3),
                     f"{_f(e['interval'][0], 3)}–{_f(e['interval'][1], 3)}",
                     "—" if vs is None else f"{vs['right_only_schedule']} / {vs['right_only_scalar']}",
                     "—" if vs is None else f"{vs['p_value']:.3g}",
                     "—" if vs is None else f"{vs['difference_interval'][0]:+.3f} to {vs['difference_interval'][1]:+.3f}"])
    return rows


def _lambda_text(value) -> str:
    """A λ as the config holds it: a number, anchors, or filter entries."""
    if isinstance(value, (int, float)):
        return f"{value:g}"
    if all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return "; ".join(f"{e.get('filter', 'other')}: {_lambda_text(e['value'])}" for e in value)


def schedules_study(sources: Sources) -> list[str]:
    """DAMC with the paper's scalar λ against schedules over the layers, on the same MCUB-synth-4 items."""
    names = ["data/schedules-synth4-seed0.json", "data/schedules-synth4-seed0-s2.json"]
    found = names[:1] + [n for n in names[1:] if (sources.docs / n).is_file()]  # the a = 1/K run is required
    rows, lines = [], []
    for name in found:
        d = sources.json(name)
        rows += _study_rows(d)
        lines.append(sources.source(name, f"{d['items']} items, seed {d['data'].get('seed')}, a = {d.get('scale', 1):g}/K. "))
    return (_table(["schedule", "λ per expert", "a·K", "accuracy", "95 % interval", "right only here / only scalar",
                    "McNemar p", "gap to scalar, 95 % interval"], rows) + [""] + _sources_list(lines))


def _interference(sources: Sources, seed: int) -> list[str]:
    name = f"data/interference-seed{seed}.json"
    d = sources.json(name)
    named = all(p.get("named") for p in d["points"])
    kept = d.get("retention")
    rows = []
    for p in d["points"]:
        acc, ci, c = p["accuracy"], p["interval"], p["damc_vs_shared"]
        lam = next(iter(p["lambda_per_expert"]["DAMC"].values()))
        row = [f"{p['scale']:g}", f"{lam:g}", f"{_f(acc['DAMC'], 3)} ({_f(ci['DAMC'][0])}–{_f(ci['DAMC'][1])})",
               f"{_f(acc['NaiveMC'], 3)} ({_f(ci['NaiveMC'][0])}–{_f(ci['NaiveMC'][1])})",
               f"{c['difference']:+.3f} ({c['difference_interval'][0]:+.2f} to {c['difference_interval'][1]:+.2f})",
               f"{c['right_only_damc']} / {c['right_only_shared']}", f"{c['p_value']:.2g}"]
        if named:
            n = p["named"]
            row.append(f"{_f(n['accuracy']['DAMC'], 3)} / {_f(n['accuracy']['NaiveMC'], 3)} "
                       f"(p {n['damc_vs_shared']['p_value']:.2g})")
        if kept:
            k = kept["kept"].get(f"{p['scale']:g}", {})
            row.append(" / ".join("—" if k.get(v) is None else _f(k[v]) for v in ("DAMC", "NaiveMC")))
        rows.append(row)
    header = ["s", "λ per expert", "DAMC (95 % interval)", "shared (95 % interval)", "gap DAMC − shared (95 % interval)",
              "right only DAMC / shared", "McNemar p"]
    if named:
        header.append("names the right option: DAMC / shared (McNemar p)")
    if kept:
        header.append(f"keeps the base's right text answers: DAMC / shared (base: {_f(kept['base_accuracy'])} of "
                      f"{kept['items']})")
    crit = d["criterion"]
    verdict = [] if crit is None else [
        f"At s = {crit['scale']:g} the gap is {crit['gap']:+.3f} with p = {crit['p_value']:.2g}: the bar "
        f"(≥ {crit['min_gap']:g} with p < {crit['alpha']:g}) {'holds' if crit['holds'] else 'does not hold'}.", ""]
    return _table(header, rows) + ["", *verdict, sources.source(name, f"MCUB-synth-4 seed {seed}, {d['items']} items. ")]


def interference_seed6173(sources: Sources) -> list[str]:
    """The curve on MCUB-synth-4 seed 6173: both compositions at each s, paired."""
    return _interference(sources, 6173)


def interference_seed8389(sources: Sources) -> list[str]:
    """The curve on MCUB-synth-4 seed 8389."""
    return _interference(sources, 8389)


def interference_routes(sources: Sources) -> list[str]:
    """The shared merge with λ on its text tokens only, and on its modality tokens only, beside both compositions."""
    rows, lines = [], []
    for seed in (6173, 8389):
        name = f"data/interference-seed{seed}.json"
        d = sources.json(name)
        lines.append(sources.source(name, f"Seed {seed}. "))
        for p in d["points"]:
            if p["scale"] == 1:
                continue
            acc, checks = p["accuracy"], p.get("route_check", {})

            def cell(variant: str, key: str) -> str:
                if variant not in acc:
                    return "—"
                versus = checks.get(key, {}).get("vs_shared")
                return _f(acc[variant], 3) + (f" (p {versus['p_value']:.2g} vs shared)" if versus else "")

            rows.append([str(seed), f"{p['scale']:g}", _f(acc["NaiveMC"], 3), cell("NaiveMC-text-lambda", "text_only"),
                         cell("NaiveMC-modality-lambda", "modality_only"), _f(acc["DAMC"], 3)])
    return (_table(["seed", "s", "shared: λ on every token", "shared: λ on text tokens only (modality at 1/K)",
                    "shared: λ on modality tokens only (text at 1/K)", "DAMC"], rows) + [""] + _sources_list(lines))


def retention_bundled(sources: Sources) -> list[str]:
    """What each variant keeps of the base's right answers on the text-only retention set."""
    name = "data/retention-bundled.json"
    r = sources.json(name)["retention"]
    parts = list(r["parts"])
    b = r["base"]
    rows = [["base alone", f"{_f(b['accuracy'])} ({_f(b['ci95'][0])}–{_f(b['ci95'][1])})", "—", "—", "—",
             *(_f(b["parts"].get(p)) for p in parts)]]
    for v, x in r["variants"].items():
        rows.append([_method_label(sources, v), f"{_f(x['accuracy'])} ({_f(x['ci95'][0])}–{_f(x['ci95'][1])})",
                     "—" if x["retention"] is None else f"{_f(x['retention'])} ({x['kept']}/{x['base_right']})",
                     f"{x['lost']} / {x['gained']}", f"{x['p_value_vs_base']:.2g}",
                     *(_f(x["parts"][p]["accuracy"]) if p in x["parts"] else "—" for p in parts)])
    return (_table(["variant", "right (95 % interval)", "keeps of the base's right answers", "lost / gained",
                    "McNemar p vs base", *(f"{p} ({n})" for p, n in r["parts"].items())], rows)
            + ["", sources.source(name, f"{sum(r['parts'].values())} text-only items, greedy. ")])


def tune_unsupervised(sources: Sources) -> list[str]:
    """λ/μ chosen with labels and without (AdaMMS), and the paper's default, on disjoint test items."""
    name = "data/tune-unsupervised-synth4.json"
    d = sources.json(name)["search"]
    stats = d["test"]
    rows = []
    for label, settings in d["test_settings"].items():
        v = stats["variants"][label]
        how = {"labelled tune": f"with labels: best validation accuracy ({_f(d['labelled']['validation_accuracy'], 3)})",
               "unsupervised (AdaMMS)": f"without labels: fewest answers changed against the neighbouring cells "
                                        f"({d['unsupervised']['differences']:g} of {d['search_items']})",
               "paper default": "λ = 1/K, μ = 1"}.get(label, label)
        rows.append([label, how, f"{settings['lambda_scale']:g}", f"{settings['mu']:g}", _f(v["accuracy"], 3),
                     f"{_f(v['ci95'][0])}–{_f(v['ci95'][1])}"])
    pairs = [f"{p['a']} against {p['b']}: {p['only_a']} / {p['only_b']} items right only with each, "
             f"McNemar p = {p['p_value']:.2g}" for p in stats["pairs"]]
    grid = sorted({c["scale"] for c in d["grid"]}), sorted({c["mu"] for c in d["grid"]})
    cells = {(c["scale"], c["mu"]): c for c in d["grid"]}
    grid_rows = [[f"{scale:g}", *(f"{_f(cells[(scale, mu)]['validation_accuracy'])} / "
                                  + ("—" if cells[(scale, mu)]["differences"] is None
                                     else f"{cells[(scale, mu)]['differences']:g}") for mu in grid[1])]
                 for scale in grid[0]]
    return (_table(["test variant", "chosen", "λ scale (λ_i = s/K)", "μ", "test accuracy", "95 % interval"], rows)
            + ["", "The grid on the search items: validation accuracy (what the labelled choice reads) / answers that "
                   "differ from a neighbouring cell's (what AdaMMS reads; — where a cell lacks a neighbour on a side):", ""]
            + _table(["λ scale \\ μ", *(f"{mu:g}" for mu in grid[1])], grid_rows)
            + ["", f"Grid: λ scale {', '.join(f'{x:g}' for x in grid[0])} × μ {', '.join(f'{x:g}' for x in grid[1])}, "
                   f"searched on {d['search_items']} items, tested on {d['test_items']} others. Paired on the test items: "
                   + "; ".join(pairs) + ".", "", sources.source(name)])


def bench_mcub(sources: Sources) -> list[str]:
    """MCUB items per second, all items in one batch against one item at a time, and where the time goes."""
    name = "data/bench-mcub.json"
    d = sources.json(name)
    q = d["mcub"]
    rows = []
    for key, label, seconds in (("batched", "all items in one batch", q["batched_s"]),
                                ("one_at_a_time", "one item at a time", q["one_item_at_a_time_s"])):
        p = q["seconds_by_part"][key]
        rows.append([label, f"{q['items'] / seconds:.3f}", f"{seconds:.1f}",
                     *(f"{p[k]:.1f}" for k in ("files", "encoders", "prefill", "decode", "other"))])
    return (_table(["run", "items/s", "seconds", "files read", "encoders", "prefill", "decode", "other"], rows)
            + ["", f"{q['items']} items × {len(q['variants'])} variants ({', '.join(q['variants'])}), {q['new_tokens']} "
                   f"new tokens at most; batched ÷ one at a time: **{q['speedup']:.2f}×** (target ≥ "
                   f"{d['targets']['mcub_batched_vs_one']:g}×)"
                   + (f", the median of {len(q['speedup_per_repeat'])} pairs of runs taken in turn "
                      f"({', '.join(f'{r:.2f}' for r in q['speedup_per_repeat'])})" if q.get("speedup_per_repeat") else "")
                   + f"; the batch prefills {q['prompt_tokens_prefilled_batched']} "
                   f"of {q['prompt_tokens']} prompt tokens (each variant's shared prefix once); the same answers both "
                   f"ways: {'yes' if q['same_answers'] else 'no'}. Items from {q['data']}.",
               "", sources.source(name, f"{d.get('setup', '')}; {d['cpu_threads']} thread"
                                        f"{'s' * (d['cpu_threads'] > 1)}, {d['device'].upper()}, median of "
                                        f"{d['repeats']} after {d['warmup']} warm-up. ")])


def bench_prefill_passes(sources: Sources) -> list[str]:
    """Prefill seconds per token of the MCUB batch's rows by the prompt tokens a pass may hold."""
    name = "data/bench-prefill-passes.json"
    d = sources.json(name)
    f = d["prefill_passes"]
    rows = [["one pass per length bucket" if p["max_tokens"] is None else f"{p['max_tokens']:,}"
             + (" (the engine's)" if p["max_tokens"] == f["engine_max_tokens"] else ""),
             p["passes"], f"{p['padded_tokens']:,}", f"{p['seconds']:.2f}", f"{p['ms_per_token']:.2f}",
             f"{p['vs_one_pass_per_bucket']:.2f}"] for p in f["passes"]]
    return (_table(["prompt tokens a pass", "passes", "padded tokens", "seconds", "ms per padded token",
                    "× one pass per bucket"], rows)
            + ["", f"{f['rows']} rows ({f['items']} items × every composition and expert) of {f['prompt_tokens']:,} prompt "
                   f"tokens, prefilled whole (no shared prefix), the budgets taken in turn. Items from {f['data']}.",
               "", sources.source(name, f"{d.get('setup', '')}; {d['cpu_threads']} threads, {d['device'].upper()}, "
                                        f"median of {d['repeats']} after {d['warmup']} warm-up. ")])


TABLES = {
    "recipe": recipe, "build-parts": build_parts, "stage-minutes": stage_minutes, "slot-reader": slot_reader,
    "build-heldout": build_heldout, "heldout-seed90210": heldout_seed90210, "heldout-seed31337": heldout_seed31337,
    "examples": examples, "lookup": lookup, "mcub-synth4": mcub_synth4, "mcub-synth4-answers": mcub_synth4_answers,
    "mcub-synth3": mcub_synth3, "curves": curves, "methods-registry": methods_registry, "methods-cost": methods_cost,
    "chat": chat, "mixed-example": mixed_example, "methods-synth4": methods_synth4,
    "bench-side-by-side": bench_side_by_side, "bench-recompose": bench_recompose,
    "chat-followups": chat_followups, "chat-reuse": chat_reuse, "bench-schedules": bench_schedules,
    "schedules-study": schedules_study, "interference-seed6173": interference_seed6173,
    "interference-seed8389": interference_seed8389, "interference-routes": interference_routes,
    "retention-bundled": retention_bundled, "tune-unsupervised": tune_unsupervised, "bench-mcub": bench_mcub,
    "bench-prefill-passes": bench_prefill_passes,
}


# --- the rewrite ---------------------------------------------------------------------

def render(text: str, sources: Sources) -> tuple[str, list[str], list[str]]:
    """`text` with every generated table rewritten; the names of the tables that changed; and the
    problems: a marker with no function in TABLES, or a JSON file missing or half written (that
    table is left as it was)."""
    changed, problems = [], []

    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in TABLES:
            problems.append(f"table {name!r} has no function in TABLES (docs/generate.py)")
            return match.group(0)
        try:
            body = "\n".join(TABLES[name](sources)) + "\n"
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"table {name!r} cannot be generated: {type(exc).__name__}: {exc}")
            return match.group(0)
        if body != match.group(3):
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return MARKER.sub(fill, text), changed, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docs/generate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a doc differs from its JSON")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the folder of the docs and their data/ (default: docs/)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the folder holding assets/ (default: the repository)")
    args = parser.parse_args(argv)
    sources = Sources(args.docs, args.repo)
    failures = []
    for path in sorted(args.docs.glob("*.md")):
        new, changed, problems = render(path.read_text(encoding="utf-8"), sources)
        failures += [f"docs/{path.name}: {problem}" for problem in problems]
        if not changed:
            continue
        if args.check:
            failures += [f"docs/{path.name}: table {name!r} differs from its JSON" for name in changed]
        else:
            path.write_text(new, encoding="utf-8")
            print(f"docs/{path.name}: rewrote {', '.join(changed)}")
    for line in failures:
        print(line, file=sys.stderr)
    if failures and args.check:
        print("run: .venv/bin/python docs/generate.py", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
