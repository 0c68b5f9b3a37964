"""``python -m composition mcub``: score compositions and experts on MCUB / AVQA / MUSIC-AVQA files or MCUB-synth.

    python -m composition mcub --data MCUB-4.json --answers MCUB-answer.json --data-root data --prompt paper --json
    torchrun --standalone --nproc-per-node 2 -m composition mcub --data ...      # items sharded over processes
    python -m composition mcub --data synth-4 --tune                             # λ/μ on seed 1, reported on seed 0
    python -m composition mcub --data synth-4 --tune --unsupervised              # + AdaMMS's choice without labels
    python -m composition mcub --retention                                       # the base's text skills kept, per variant

Writes ``<stem>-predictions.jsonl`` (one line per item and variant; what ``--resume``
continues from) and ``<stem>-paper/<variant>.jsonl`` (the paper's predictions-file format,
for ``eval_avqa.py`` / ``eval_music_avqa.py``) next to the data file, or in the working
directory when that folder is read-only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import add_composition_args, build_model, composition_config
from .registry import command


@command("mcub", "score compositions and experts on MCUB-style files (MCUB, AVQA, MUSIC-AVQA) or the MCUB-synth sets")
def build_mcub(p: argparse.ArgumentParser):
    p.add_argument("--data", default=None, metavar="FILE|synth-3|synth-4",
                   help="a question JSON (the released MCUB/AVQA/MUSIC-AVQA files as they are), or synth-4 / synth-3 "
                        "(sets built by python -m training.mcub_synth into .cache/mcub-synth); needed unless --retention")
    p.add_argument("--answers", default=None, metavar="FILE",
                   help="the gold answers file (e.g. MCUB-answer.json), joined on id; default: the gpt turns hold the gold")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder the file's relative paths resolve against (default: the JSON's folder, then the working "
                        "directory); nothing outside it is read")
    p.add_argument("--scoring", choices=("paper", "letter"), default=None,
                   help="paper: first character (MCUB, AVQA) or VQA-normalised exact match (MUSIC-AVQA), as the paper scores; "
                        "letter: the first option letter anywhere sensible (lenient). Default: letter for MCUB-synth, paper otherwise")
    p.add_argument("--task", default=None, choices=("mcub", "avqa", "music-avqa", "mcub-synth", "multiple-choice", "open-ended"),
                   help="the task family (default: detected from the file names and answers)")
    p.add_argument("--prompt", choices=("studio", "paper"), default="studio",
                   help="studio: our modality lines + the question; paper: the human turn verbatim with the original's "
                        "labels, 128 new tokens (default studio)")
    p.add_argument("--seed", type=int, default=0, help="MCUB-synth seed (default 0)")
    p.add_argument("--synth-items", type=int, default=200, help="items per MCUB-synth set (default 200)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items (of each subset for synth-3)")
    p.add_argument("--skip", type=int, default=0, metavar="N",
                   help="leave out the first N items (of each subset for synth-3): with --limit M it evaluates items "
                        "N+1..M, to extend an earlier --limit N run without repeating it; its predictions go to "
                        "<stem>-itemsN+1-M-predictions.jsonl, so the earlier file stays (default 0)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAMES",
                   help="NaiveMC, DAMC, expert:<name>, or a merge method; default: NaiveMC, DAMC and every expert")
    p.add_argument("--batch-items", type=int, default=8, help="items per batch; each batch runs items x variants rows (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length (default 4 with --prompt studio, 128 with --prompt paper)")
    p.add_argument("--predictions", default=None, metavar="FILE",
                   help="the predictions .jsonl (default <data stem>-predictions.jsonl next to the data)")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was stopped: keep the answers already in the predictions file")
    p.add_argument("--full-answers", action="store_true",
                   help="generate every answer to its end; by default a batch stops once every answer's score is settled "
                        "(e.g. the letter rule has its letter): the same scores, shorter answer texts")
    p.add_argument("--vlmevalkit", default=None, metavar="DIR",
                   help="also write each variant's predictions as VLMEvalKit's multiple-choice TSV (<variant>_MCUB.tsv in DIR)")
    p.add_argument("--stats-from", nargs="+", default=None, metavar="PREDICTIONS",
                   help="no model: the paired statistics (95 %% intervals, right-alone counts, exact McNemar) of predictions "
                        "files written earlier (<stem>-predictions.jsonl; several files of the same items are joined), for "
                        "--variants (default: all their variants)")
    p.add_argument("--retention", action="store_true",
                   help="instead of MCUB: ask the fixed text-only set (option-letter lookup, chat checks, facts, arithmetic) "
                        "of the base alone and of every variant, and report what each keeps of the base's right answers")
    g = p.add_argument_group("λ/μ search (--tune)")
    g.add_argument("--tune", action="store_true",
                   help="search λ and μ on a validation split, report accuracy with the best setting on the (disjoint) test items")
    g.add_argument("--val-data", default=None, metavar="FILE", help="validation question file (default: a seeded split of --data)")
    g.add_argument("--val-answers", default=None, metavar="FILE", help="answers file of --val-data")
    g.add_argument("--val-fraction", type=float, default=0.3, help="share of --data used for validation when no --val-data (default 0.3)")
    g.add_argument("--val-seed", type=int, default=None, help="MCUB-synth validation seed (default --seed + 1)")
    g.add_argument("--tune-variant", default="DAMC", help="the variant whose coefficients are searched (default DAMC)")
    g.add_argument("--tune-scales", default=None, metavar="S,S,..", help="λ scales (λ_i = scale/K), default 0.5,0.75,1,1.25,1.5")
    g.add_argument("--tune-mus", default=None, metavar="M,M,..", help="μ values (every modality), default 0.5,0.75,1,1.25")
    g.add_argument("--unsupervised", action="store_true",
                   help="with --tune: also choose λ/μ without labels (AdaMMS: the cell whose answers change least against "
                        "its neighbouring cells), from the same grid run; report both choices and the paper's default on "
                        "the test items with paired statistics")
    g.add_argument("--search-sample", type=int, default=100, metavar="N",
                   help="with --unsupervised: at most N search items (a seeded sample, as AdaMMS's script; default 100)")
    add_composition_args(p)
    p.add_argument("--json", action="store_true",
                   help="print JSON: {\"items\", \"accuracy\": {variant: fraction}, \"subsets\"?, \"task\", \"settings\", "
                        "\"predictions\"} (with --tune: {\"tune\": ...})")
    return run_mcub


# --- loading ------------------------------------------------------------------------
def _load_sets(args) -> tuple[list, list, str]:
    """(question sets, items, output stem)."""
    from ..evaluation import SYNTH_KINDS, load_question_set, synth_sets

    if args.data in SYNTH_KINDS:
        if args.answers or args.data_root:
            from ..errors import CompositionError

            raise CompositionError("--answers and --data-root apply to question files; MCUB-synth sets carry their answers.")
        sets = [load_question_set(path) for path in synth_sets(args.data, args.seed, args.synth_items).values()]
        stem = f"mcub-{args.data.replace('-', '')}"
    else:
        sets = [load_question_set(args.data, answers=args.answers, data_root=args.data_root)]
        stem = Path(args.data).stem
    items = [item for s in sets for item in s.items[args.skip: args.limit]]
    if not items:
        from ..errors import CompositionError

        raise CompositionError(f"--skip {args.skip} leaves no items (the sets hold {max(len(s.items) for s in sets)}"
                               f"{'' if args.limit is None else f', --limit {args.limit}'}); lower --skip.")
    return sets, items, stem


def _task(args, sets) -> tuple[str, str]:
    from ..evaluation.scoring import detect_family

    if args.task:
        return args.task, "--task"
    items = [item for s in sets for item in s.items]
    return detect_family(sets[0].names, [item.answer for item in items], all(item.synth for item in items))


# --- run ----------------------------------------------------------------------------
def run_mcub(args: argparse.Namespace) -> int:
    from ..discovery import folder_digest, scan_experts
    from ..errors import CompositionError
    from ..evaluation import DEFAULT_CONFIG, PAPER_CONFIG, evaluate
    from ..evaluation import predictions as files
    from ..evaluation.distributed import all_gather_json, init_distributed, launched_by_torchrun, shard
    from ..evaluation.prompt import PAPER_LABELS
    from ..evaluation.scoring import default_scoring, rule_for
    from ..generate import GenerationConfig

    for flag, value in (("--limit", args.limit), ("--batch-items", args.batch_items), ("--synth-items", args.synth_items),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise CompositionError(f"{flag} {value}; expected a positive integer.")
    if args.skip < 0:
        raise CompositionError(f"--skip {args.skip}; expected 0 or a positive integer.")
    distributed = launched_by_torchrun()
    if args.stats_from:
        return _run_stats_from(args)
    if args.retention:
        if args.tune or args.resume or distributed:
            raise CompositionError("--retention runs alone in one process: drop --tune, --resume and torchrun.")
        return _run_retention(args)
    if args.data is None:
        raise CompositionError("--data is required: a question file, synth-4 or synth-3 (or give --retention).")
    if args.unsupervised and not args.tune:
        raise CompositionError("--unsupervised chooses λ/μ: give it with --tune.")
    if args.tune and (distributed or args.resume):
        raise CompositionError("--tune runs in one process and does not resume; drop torchrun / --resume for it.")
    default_tokens = (PAPER_CONFIG if args.prompt == "paper" else DEFAULT_CONFIG).max_new_tokens
    config = GenerationConfig(max_new_tokens=args.max_new_tokens or default_tokens, temperature=0.0)
    # Every cheap check first: files, answers, paths, gold answers, prompts; then experts; then the model.
    sets, items, stem = _load_sets(args)
    family, detected_by = _task(args, sets)
    scoring = args.scoring or default_scoring(family)
    rule = rule_for(scoring, family)
    for item in items:
        rule.check_gold(item.answer, f"item {item.id!r}")
    entries = scan_experts(args.experts)
    composition = composition_config(args, entries)
    coefficients = composition.coefficients()  # the user's λ; the engine gives each item set's auto λ its 1/K
    # The paper's prompt reproduces the original, whose merged model adds every expert's text delta.
    merge_all = composition.merge_all_experts or args.prompt == "paper"
    task = {"family": family, "detected_by": detected_by, "scoring": scoring, "rule": rule.name,
            "rule_description": rule.description}
    if args.tune:
        val_items = _validation_items(args, items)
        cm = _selected(build_model(args, entries), composition)
        return _run_tune(args, cm, val_items, items, rule, config, task)

    ctx = init_distributed(args.device) if distributed else None
    try:
        cm = _selected(build_model(args, entries), composition)
        specs = composition.variant_specs() or composition.plan(cm, {m for item in items for m in item.modalities}).specs
        names = [s.name for s in specs]
        settings = files.run_settings(
            experts={e.config.name: folder_digest(e.folder) for e in entries}, base_sha256=getattr(cm.base, "sha256", None),
            prompt=args.prompt, config=config, template=cm.base.template.name, scoring=rule.name,
            batch_items=args.batch_items, variants=names, coefficients=coefficients, method_params=args.method_params,
            processes=ctx.world_size if ctx else 1, labels=PAPER_LABELS if args.prompt == "paper" else None,
            merge_all_experts=composition.merge_all_experts)  # the paper prompt's own rule is in "prompt"
        pred, paper_dir = files.output_paths(sets[0].path, stem, predictions=args.predictions, skip=args.skip, limit=args.limit)
        previous = files.read_previous(pred, settings, {item.id for item in items}) if args.resume else {}
        if ctx is not None:
            ctx.barrier()  # every rank has read the stopped run's answers before anyone appends to them
        if (ctx is None or ctx.is_main):
            files.write_settings(pred, settings)
        todo = [item for item in items if not all((item.id, v) in previous for v in names)]
        mine = todo if ctx is None else [todo[i] for i in shard(len(todo), ctx.world_size, ctx.rank)]
        log_path = pred if ctx is None else files.part_path(pred, ctx.rank)
        log = files.ProgressLog(log_path, fresh=not args.resume)
        start = time.perf_counter()
        try:
            with _progress_bar(len(mine), disable=ctx is not None and not ctx.is_main) as bar:
                if mine:
                    evaluate(cm, mine, specs, coefficients, config, batch_items=args.batch_items, rule=rule,
                             prompt=args.prompt, previous=previous, on_chunk=log, merge_all_experts=merge_all,
                             progress=lambda done, total: bar.update(done - bar.n), stop_when_scored=not args.full_answers)
        finally:
            log.close()
        answers = dict(previous)
        new = files.read_answers(log_path, {item.id for item in mine})
        if ctx is not None:
            for part in all_gather_json([[k[0], k[1], t] for k, t in new.items()], ctx):
                answers.update({(i, v): t for i, v, t in part})
        else:
            answers.update(new)
        if ctx is not None and not ctx.is_main:
            return 0
        result = evaluate(cm, items, specs, coefficients, config, batch_items=args.batch_items, rule=rule,
                          prompt=args.prompt, previous=answers, merge_all_experts=merge_all)
        result.seconds = time.perf_counter() - start
        written = files.write_lines(pred, (p.to_json() for p in result.predictions))
        for part in files.part_paths(pred):
            part.unlink(missing_ok=True)
        paper_files = result.write_paper_predictions(paper_dir, items)
        if args.vlmevalkit:
            from ..evaluation.vlmevalkit import write_vlmevalkit_tsv

            tsv = write_vlmevalkit_tsv(result, items, args.vlmevalkit)
            print(f"VLMEvalKit TSV: {', '.join(str(p) for p in tsv.values())}", file=sys.stderr)
        print(f"predictions: {written}", file=sys.stderr)
        print(f"paper-format predictions: {paper_dir}", file=sys.stderr)
        summary = {**result.to_json(), "task": task, "settings": settings,
                   "predictions": {"file": str(written), "paper": {v: str(p) for v, p in paper_files.items()}},
                   "resumed_answers": len(previous)}
        extra = sum(len(s.answers_without_question) for s in sets)
        if extra:
            summary["answers_without_question"] = extra
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            _print_mcub_table(result, summary)
        return 0
    finally:
        if ctx is not None:
            ctx.close()


def _selected(cm, composition):
    """The loaded model composing only the config's experts (all of them when it names none)."""
    return cm if composition.experts is None else cm.subset(composition.experts)


# --- tuning -------------------------------------------------------------------------
def _validation_items(args, test_items: list) -> list:
    """The validation items: --val-data, another MCUB-synth seed, or a seeded split (then removed from the test items)."""
    from ..errors import CompositionError
    from ..evaluation import SYNTH_KINDS, load_question_set, synth_sets
    from ..evaluation.tune import split_items

    if args.val_data:
        return load_question_set(args.val_data, answers=args.val_answers, data_root=args.data_root).items
    if args.data in SYNTH_KINDS:
        seed = args.val_seed if args.val_seed is not None else args.seed + 1
        if seed == args.seed:
            raise CompositionError(f"--val-seed {seed} is the test seed; validation must come from another seed.")
        return [item for path in synth_sets(args.data, seed, args.synth_items).values()
                for item in load_question_set(path).items[: args.limit]]
    val, test_items[:] = split_items(test_items, args.val_fraction, args.seed)
    return val


def _parse_grid(text: str | None, default, flag: str) -> list[float]:
    from ..evaluation.tune import parse_grid

    return list(default) if text is None else parse_grid(text, flag)


def _run_tune(args, cm, val_items, test_items, rule, config, task) -> int:
    from ..evaluation.tune import DEFAULT_MUS, DEFAULT_SCALES, tune_coefficients

    scales = _parse_grid(args.tune_scales, DEFAULT_SCALES, "--tune-scales")
    mus = _parse_grid(args.tune_mus, DEFAULT_MUS, "--tune-mus")
    if args.unsupervised:
        return _run_search(args, cm, val_items, test_items, rule, config, task, scales, mus)
    result = tune_coefficients(cm, val_items, test_items, scales=scales, mus=mus, variant=args.tune_variant, rule=rule,
                               config=config, prompt=args.prompt, batch_items=args.batch_items,
                               progress=lambda done, total, label: print(f"[{done}/{total}] {label}", file=sys.stderr))
    out = {"tune": result.to_json(), "task": task,
           "coefficients": {"+".join(m): _coef_json(result.coefficients(cm, m))
                            for m in dict.fromkeys(item.modalities for item in test_items)}}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"best on {result.n_validation} validation items: λ scale {result.best_scale:g} (λ_i = scale/K), "
              f"μ {result.best_mu:g}: {100 * result.validation_accuracy:.1f} %")
        print(f"on {result.n_test} test items: {100 * result.test_accuracy:.1f} % "
              f"(paper default λ = 1/K, μ = 1: {100 * result.default_test_accuracy:.1f} %)")
        if result.test_statistics is not None:
            from ..evaluation.paired import format_report

            print("\n".join(format_report(result.test_statistics)))
    return 0


def _run_search(args, cm, val_items, test_items, rule, config, task, scales, mus) -> int:
    """--tune --unsupervised: one grid run on the validation items gives the labelled and the AdaMMS choice."""
    from ..errors import CompositionError
    from ..evaluation.unsupervised import search_coefficients

    if args.search_sample < 1:
        raise CompositionError(f"--search-sample {args.search_sample}; expected a positive integer.")
    result = search_coefficients(cm, val_items, test_items, scales=scales, mus=mus, variant=args.tune_variant, rule=rule,
                                 config=config, prompt=args.prompt, batch_items=args.batch_items, sample=args.search_sample,
                                 progress=lambda done, total, label: print(f"[{done}/{total}] {label}", file=sys.stderr))
    if args.json:
        print(json.dumps({"search": result.to_json(), "task": task}, indent=2))
    else:
        print("\n".join(result.format()))
    return 0


def _run_stats_from(args) -> int:
    """--stats-from: paired statistics of saved predictions files, no model loaded."""
    from ..errors import CompositionError
    from ..evaluation.paired import format_report, paired_report
    from .common import variant_names

    rows = []
    for name in args.stats_from:
        path = Path(name)
        if not path.is_file():
            raise CompositionError(f"--stats-from {name}: no such predictions file.")
        for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            try:
                row = json.loads(line)
                rows.append({"id": str(row["id"]), "variant": str(row["variant"]), "correct": bool(row["correct"]),
                             "subset": row.get("subset", "")})
            except (ValueError, KeyError, TypeError):
                raise CompositionError(f"{path.name} line {k + 1} is not a predictions line "
                                       "({\"id\", \"variant\", \"correct\", ...}).") from None
    wanted = variant_names(args.variants)
    report = paired_report(rows, wanted)
    out = {"files": [Path(n).name for n in args.stats_from], "statistics": report}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(format_report(report)))
    return 0


def _run_retention(args) -> int:
    """--retention: the fixed text-only set, base alone against every variant."""
    from ..discovery import scan_experts
    from ..evaluation.retention import measure_retention

    entries = scan_experts(args.experts)
    composition = composition_config(args, entries)
    cm = _selected(build_model(args, entries), composition)
    report = measure_retention(cm, composition.variants, coefficients=composition.coefficients(),
                               progress=lambda done, total: print(f"[{done}/{total}] retention items", file=sys.stderr))
    if args.json:
        print(json.dumps({"retention": report.to_json(), "items": report.items}, indent=2))
    else:
        print("\n".join(report.format()))
    return 0


def _coef_json(coefficients) -> dict:
    return {"lambdas": {k: round(v, 6) for k, v in coefficients.lambdas.items()},
            "mus": {k: round(v, 6) for k, v in coefficients.mus.items()}}


# --- output -------------------------------------------------------------------------
def _progress_bar(total: int, disable: bool = False):
    """A tqdm bar on stderr (shown on a terminal only, so pipes and --json stay clean)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="item", file=sys.stderr, disable=True if disable else None, leave=False)


def _print_mcub_table(result, summary: dict) -> None:
    task = summary["task"]
    print(f"{summary['items']} items, {result.seconds:.1f} s ({result.items_per_second:.2f} items/s); "
          f"task {task['family']} ({task['detected_by']}), scoring {task['scoring']} ({task['rule']})")
    from ..evaluation.paired import format_report

    reports = {"all": summary["statistics"]}
    reports.update({name: s["statistics"] for name, s in summary.get("subsets", {}).items()})
    for group, report in reports.items():
        print(f"== {group}")
        print("\n".join(format_report(report)))
