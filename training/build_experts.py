"""Rebuild the bundled experts from scratch: ``python -m training.build_experts``.

Fixed seeds throughout (scenes, initialisation, batches). For each modality: render and
encode the training scenes, stage 1 once, then stages 2 and 3 for both training kinds; the 8
experts are written to ``assets/experts/<name>/`` in fp16, with a report of losses, wall
times and held-out accuracy in ``assets/experts/training_report.json``. Uses the GPU when
one is present (``--device``); on a 2-core CPU the bundled set takes about 2.5 h as two
parallel one-thread parts (README "Bundled experts").

Progress is kept in ``--state`` (default ``.cache/build-state``): every finished stage, and
every ``--checkpoint-every`` steps of a running one, with the optimizer's state, so running
the same command again continues exactly where a stopped run left off (``--stop-after
SECONDS`` or Ctrl-C pauses it cleanly, status 3; ``--fresh`` starts over; other settings
than the state's are refused). One build can so span several working sessions.

``--stage3-from DIR`` runs only stage 3 (the option-letter lookup, text only) on the experts
saved in DIR and writes the results to ``--out``: how a set trained before stage 3 existed
is brought up to date without repeating stages 0-2.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import BuildPaused, BuildState, differing
from .data import TRAIN_SCENES, ModalityData, prepare_modality
from .recipe import ModalityParts, Replay, TrainConfig, Trainer, add_stage0_1_arguments, expert_name
from .world import MODALITIES

REPO = Path(__file__).resolve().parent.parent
KINDS = ("decoupled", "shared")
# The code whose change makes a different run of the same command: a build state records
# its digest and is not resumed by other code (the scenes, questions, recipe and routing).
RECIPE_CODE = ("training/recipe.py", "training/data.py", "training/instructions.py", "training/world.py", "training/scene.py",
               "training/lookup.py", "training/point_pretrain.py", "training/slots.py", "training/render_image.py", "training/render_audio.py",
               "training/render_video.py", "training/render_point.py", "training/checkpoint.py",
               "composition/routing.py", "composition/prompt.py", "composition/templates.py", "composition/projectors.py")


def recipe_digest() -> str:
    """sha256 over the files of ``RECIPE_CODE``."""
    import hashlib

    digest = hashlib.sha256()
    for name in RECIPE_CODE:
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes())
    return digest.hexdigest()


def build(out_dir: Path, config: TrainConfig, n_scenes: int, cache_dir: Path, modalities=MODALITIES, device: str = "cpu",
          eval_items: int = 42, log=print, kinds=KINDS, state: BuildState | None = None) -> dict:
    """Train and save the experts of ``modalities`` x ``kinds`` into ``out_dir``, with a report.

    With ``state`` (``training.checkpoint``), every finished stage and every few steps of a
    running one are saved there, a rerun continues where the last one stopped (finished
    experts are written again from their saved result, not retrained), and a pause request
    raises ``BuildPaused`` after saving.
    """
    from composition.base_llm import load_base_llm

    from .render_audio import speech_available

    start = time.perf_counter()
    base = load_base_llm(device=device)
    trainer = Trainer(base, config, log=log)
    trainer.state = state
    if state is not None:
        state.bind("base", getattr(base, "sha256", None))
    # The recipe's code and the thread count are part of what a run is (float sums differ
    # between thread counts), so a set built in parts records them and joins only its own parts.
    report = {"config": asdict(config), "n_scenes": n_scenes, "device": device, "code": recipe_digest(),
              "threads": torch.get_num_threads(), "experts": {}, "seconds": {}}
    report_file = out_dir / "training_report.json"
    if report_file.is_file() and (set(kinds) != set(KINDS) or set(modalities) != set(MODALITIES)):
        # A partial rebuild (some modalities or kinds) updates the report of the others.
        previous = json.loads(report_file.read_text())
        differ = differing(previous, report, ("config", "n_scenes", "device", "code", "threads"))
        if not differ:
            report["experts"].update(previous.get("experts", {}))
            report["seconds"].update(previous.get("seconds", {}))
        else:
            log(f"{report_file}: made with other {', '.join(differ)}; its entries for "
                f"{', '.join(sorted(previous.get('experts', {}))) or 'no expert'} are not carried over")
    out_dir.mkdir(parents=True, exist_ok=True)
    for modality in modalities:
        colours_known = modality != "audio" or speech_available()
        if state is not None:
            state.bind(f"{modality}/colours_known", colours_known)  # audio: whether speech names the colours
        todo = [t for t in kinds if not _restore_expert(trainer, state, modality, t, out_dir, report)]
        if not todo:
            log(f"{modality}: {', '.join(expert_name(modality, t) for t in kinds)} already built (state {state.folder})")
            continue
        if state is not None:
            state.check_pause(f"the {modality} experts")
        t0 = time.perf_counter()
        data = prepare_modality(modality, n_scenes, config.seed, cache_dir, log=log)
        heldout = prepare_modality(modality, eval_items, config.seed + 1000, cache_dir, log=log)
        report["seconds"][f"{modality}/data"] = round(time.perf_counter() - t0, 1)
        parts, report["seconds"][f"{modality}/stage1"] = _stage1(trainer, data, colours_known, heldout)
        for training in todo:
            name = expert_name(modality, training)
            if state is not None:
                state.check_pause(f"{name}")
            t0 = time.perf_counter()
            deltas, tuned, log_rows = _stage2(trainer, data, parts, training, colours_known)
            report["seconds"][f"{name}/stage2"] = log_rows[-1]["seconds"] if log_rows else round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            deltas, stage3_rows = trainer.stage3(deltas, training, modality, Replay(data, tuned, colours_known))
            report["seconds"][f"{name}/stage3"] = stage3_rows[-1]["seconds"] if stage3_rows else round(time.perf_counter() - t0, 1)
            expert = trainer.make_expert(modality, training, deltas, tuned)
            accuracy = _save_and_score(trainer, expert, out_dir / name, heldout, colours_known, report)
            report["experts"][expert.name] = {"stage1": parts.log, "stage2": log_rows, "stage3": stage3_rows, "heldout": accuracy}
            if state is not None:
                seconds = {k: v for k, v in report["seconds"].items() if k.startswith(f"{name}/")}
                state.save_result(f"{name} expert", trainer.deltas_tensors(deltas) | trainer.parts_tensors(tuned),
                                  {"report": report["experts"][name], "seconds": seconds})
                for loop in (f"{modality} {training} stage 2", f"{modality} {training} stage 3"):
                    state.discard_loop(loop)
                state.result_path(f"{name} stage 2").unlink(missing_ok=True)
            log(f"{expert.name}: held-out accuracy {accuracy}")
            report_file.write_text(json.dumps(report, indent=1) + "\n")
    report["seconds"]["total"] = round(time.perf_counter() - start, 1)
    report_file.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _stage1(trainer: Trainer, data, colours_known: bool, heldout) -> tuple[ModalityParts, float]:
    """Stage 1 of one modality (or its saved result) and the seconds it took; with a state,
    stage 0 is saved on its own (stage 1 is a loop that may pause)."""
    state, modality, t0 = trainer.state, data.modality, time.perf_counter()
    saved = state.load_result(f"{modality} stage 1") if state is not None else None
    if saved is not None:
        return trainer.parts_from_tensors(data, saved[0], saved[1]["log"]), saved[1]["seconds"]
    if state is None:
        return trainer.stage1(data, colours_known, heldout), round(time.perf_counter() - t0, 1)
    saved = state.load_result(f"{modality} stage 0")
    if saved is not None:
        parts, before = trainer.parts_from_tensors(data, saved[0], saved[1]["log"]), saved[1]["seconds"]
    else:
        parts = trainer.stage0_parts(data, colours_known, heldout)
        before = round(time.perf_counter() - t0, 1)
        state.save_result(f"{modality} stage 0", trainer.parts_tensors(parts), {"log": parts.log, "seconds": before})
    t0 = time.perf_counter()
    parts.log += trainer.align(data, parts, colours_known)
    seconds = round(before + time.perf_counter() - t0, 1)
    state.save_result(f"{modality} stage 1", trainer.parts_tensors(parts), {"log": parts.log, "seconds": seconds})
    state.discard_loop(f"{modality} stage 1")
    return parts, seconds


def _stage2(trainer: Trainer, data, parts: ModalityParts, training: str, colours_known: bool):
    """Stage 2 of one expert, or its saved result (saved once finished, so a pause in stage 3 keeps it)."""
    state, unit = trainer.state, f"{expert_name(data.modality, training)} stage 2"
    saved = state.load_result(unit) if state is not None else None
    if saved is not None:
        tensors, meta = saved
        return trainer.deltas_from_tensors(tensors), trainer.parts_from_tensors(data, tensors, []), meta["log"]
    deltas, tuned, rows = trainer.stage2(data, parts, training, colours_known)
    if state is not None:
        state.save_result(unit, trainer.deltas_tensors(deltas) | trainer.parts_tensors(tuned), {"log": rows})
    return deltas, tuned, rows


def _restore_expert(trainer: Trainer, state: BuildState | None, modality: str, training: str, out_dir: Path,
                    report: dict) -> bool:
    """Write an expert the state has finished into ``out_dir`` again (no retraining) and take
    its report entry; False when it is not finished."""
    name = expert_name(modality, training)
    saved = state.load_result(f"{name} expert") if state is not None else None
    if saved is None:
        return False
    tensors, meta = saved
    data = ModalityData(modality, [], [])  # a finished expert needs no scenes: its point features are not used again
    tuned = trainer.parts_from_tensors(data, tensors, [])
    expert = trainer.make_expert(modality, training, trainer.deltas_from_tensors(tensors), tuned)
    _write_expert(expert, out_dir / name)
    report["experts"][name] = meta["report"]
    report["seconds"].update(meta["seconds"])
    return True


def _write_expert(expert, target: Path, source: Path | None = None) -> None:
    """Save ``expert`` in fp16 (what users get) to ``target``, replacing an older one there,
    unless ``target`` is the folder the expert was loaded from."""
    from composition.expert import save_expert

    if target.exists() and (source is None or target.resolve() != source.resolve()):
        shutil.rmtree(target)
    save_expert(expert, target, dtype=torch.float16)


def _save_and_score(trainer: Trainer, expert, target: Path, heldout, colours_known: bool, report: dict,
                    source: Path | None = None) -> dict:
    """Save ``expert`` in fp16 to ``target`` (replacing an older one, unless it is the folder it
    was loaded from) and return its held-out accuracy; the eval time goes into the report."""
    from .evaluate import heldout_accuracy

    _write_expert(expert, target, source)
    t0 = time.perf_counter()
    accuracy = heldout_accuracy(trainer, target, heldout, colours_known, seed=trainer.config.seed)
    report["seconds"][f"{expert.name}/eval"] = round(time.perf_counter() - t0, 1)
    return accuracy


def apply_stage3(source: Path, out_dir: Path, config: TrainConfig, cache_dir: Path, modalities=MODALITIES, device: str = "cpu",
                 eval_items: int = 42, log=print, kinds=KINDS, n_scenes: int = TRAIN_SCENES) -> dict:
    """Stage 3 on the experts saved in ``source`` (those of ``modalities`` and ``kinds``), written to
    ``out_dir`` and scored on held-out scenes. The training report in ``out_dir`` (else the one
    in ``source``) is carried over, so runs for different modalities add up. Experts whose stage 3
    replays stage-2 rows (``config.stage3_replay``) replay them from the ``n_scenes`` training
    scenes, read through the saved expert's own parts."""
    from composition.base_llm import load_base_llm
    from composition.expert import load_expert

    from .render_audio import speech_available

    start = time.perf_counter()
    base = load_base_llm(device=device)
    trainer = Trainer(base, config, log=log)
    previous = next((f for f in (out_dir / "training_report.json", source / "training_report.json") if f.is_file()), None)
    report = json.loads(previous.read_text()) if previous else {"experts": {}, "seconds": {}}
    report["stage3"] = {"from": str(source), "steps": config.stage3_steps, "batch_size": config.stage3_batch_size,
                        "lr": config.lr_stage3, "device": device}
    out_dir.mkdir(parents=True, exist_ok=True)
    for modality in modalities:
        colours_known = modality != "audio" or speech_available()
        heldout = prepare_modality(modality, eval_items, config.seed + 1000, cache_dir, log=log)
        for training in kinds:
            name = expert_name(modality, training)
            folder = source / name
            if not folder.is_dir():
                raise FileNotFoundError(f"no expert {name!r} in {source}; train it first (python -m training.build_experts).")
            expert = load_expert(folder)
            t0 = time.perf_counter()
            replay = None
            if training in config.stage3_replay:
                data = prepare_modality(modality, n_scenes, config.seed, cache_dir, log=log)
                replay = Replay(data, trainer.expert_parts(data, expert), colours_known)
            expert.deltas, rows = trainer.stage3(expert.deltas, training, modality, replay)
            report["seconds"][f"{name}/stage3"] = round(time.perf_counter() - t0, 1)
            accuracy = _save_and_score(trainer, expert, out_dir / name, heldout, colours_known, report, source=folder)
            entry = report["experts"].setdefault(name, {})
            entry["heldout_before_stage3"] = entry.get("heldout")
            entry.update({"stage3": rows, "heldout": accuracy})
            log(f"{name}: held-out accuracy after stage 3 {accuracy}")
            (out_dir / "training_report.json").write_text(json.dumps(report, indent=1) + "\n")
    report["seconds"]["stage3_total"] = round(time.perf_counter() - start, 1)
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.build_experts", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "assets" / "experts"))
    parser.add_argument("--cache", default=str(REPO / ".cache" / "training"))
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="training kinds to build")
    parser.add_argument("--scenes", type=int, default=TRAIN_SCENES, help="training scenes per modality")
    parser.add_argument("--point-pretrain-steps", type=int, default=TrainConfig.point_pretrain_steps,
                        help="point encoder pre-training steps (a classifier, no LLM pass)")
    add_stage0_1_arguments(parser)
    parser.add_argument("--stage2-steps", type=int, default=None,
                        help=f"stage-2 steps for every modality (default {TrainConfig.stage2_steps}, "
                             f"{dict(TrainConfig.stage2_steps_by_modality)} for those modalities)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--stage3-steps", type=int, default=TrainConfig.stage3_steps, help="option-letter lookup steps (text only)")
    parser.add_argument("--stage3-from", default=None, metavar="DIR",
                        help="run only stage 3 on the experts saved in DIR (written to --out)")
    parser.add_argument("--eval-items", type=int, default=42)
    parser.add_argument("--state", default=str(REPO / ".cache" / "build-state"), metavar="DIR",
                        help="folder of the build's progress: a rerun of the same command resumes from it "
                             "(default .cache/build-state; training.checkpoint)")
    parser.add_argument("--no-state", action="store_true", help="keep no progress (a stopped build starts over)")
    parser.add_argument("--fresh", action="store_true", help="delete the state folder first and start over")
    parser.add_argument("--checkpoint-every", type=int, default=10, metavar="STEPS",
                        help="save a running stage every this many steps (default 10)")
    parser.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                        help="pause (save and exit with status 3) after this many seconds; rerun to resume")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    steps = {} if args.stage2_steps is None else {"stage2_steps": args.stage2_steps, "stage2_steps_by_modality": ()}
    config = TrainConfig(point_pretrain_steps=args.point_pretrain_steps, stage0_steps=args.stage0_steps,
                         stage1_steps=args.stage1_steps, batch_size=args.batch_size, stage3_steps=args.stage3_steps,
                         seed=args.seed, **steps)
    if args.stage3_from is not None:
        report = apply_stage3(Path(args.stage3_from), Path(args.out), config, Path(args.cache), tuple(args.modalities), args.device,
                              args.eval_items, log=lambda msg: print(msg, flush=True), kinds=tuple(args.kinds),
                              n_scenes=args.scenes)
        print(json.dumps({k: v["heldout"] for k, v in report["experts"].items()}, indent=1))
        print(f"total {report['seconds']['stage3_total']:.0f} s")
        return 0
    state = None
    if not args.no_state:
        # Float sums differ between devices and thread counts, and other code is another run.
        settings = {"config": asdict(config), "scenes": args.scenes, "eval_items": args.eval_items, "device": args.device,
                    "threads": torch.get_num_threads(), "code": recipe_digest()}
        try:
            if args.fresh:
                BuildState.clear(Path(args.state))
            state = BuildState(Path(args.state), settings, every=args.checkpoint_every, stop_after=args.stop_after)
        except ValueError as exc:  # StateMismatch, or a bad --checkpoint-every / --stop-after
            print(f"error: {exc}", file=sys.stderr)
            return 2
        state.catch_signals()
    try:
        report = build(Path(args.out), config, args.scenes, Path(args.cache), tuple(args.modalities), args.device, args.eval_items,
                       log=lambda msg: print(msg, flush=True), kinds=tuple(args.kinds), state=state)
    except BuildPaused as exc:
        print(f"paused: {exc}. Run the same command again to continue.", flush=True)
        return 3
    print(json.dumps({k: v["heldout"] for k, v in report["experts"].items()}, indent=1))
    print(f"total {report['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
