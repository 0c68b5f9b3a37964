"""Rebuild the bundled experts from scratch: ``python -m training.build_experts``.

Fixed seeds throughout (scenes, initialisation, batches). For each modality: render and
encode the training scenes, stage 1 once, then stages 2 and 3 for both training kinds; the 8
experts are written to ``assets/experts/<name>/`` in fp16, with a report of losses, wall
times and held-out accuracy in ``assets/experts/training_report.json``. Uses the GPU when
one is present (``--device``); on a 2-core CPU the whole run takes about 80 minutes
(from its parts' measured times and the two-thread speed-up; README "Bundled experts").

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

from .data import prepare_modality
from .recipe import TrainConfig, Trainer, expert_name
from .world import MODALITIES

REPO = Path(__file__).resolve().parent.parent
KINDS = ("decoupled", "shared")


def build(out_dir: Path, config: TrainConfig, n_scenes: int, cache_dir: Path, modalities=MODALITIES, device: str = "cpu",
          eval_items: int = 42, log=print, kinds=KINDS) -> dict:
    from composition.base_llm import load_base_llm

    from .render_audio import speech_available

    start = time.perf_counter()
    base = load_base_llm(device=device)
    trainer = Trainer(base, config, log=log)
    report = {"config": asdict(config), "n_scenes": n_scenes, "device": device, "experts": {}, "seconds": {}}
    report_file = out_dir / "training_report.json"
    if report_file.is_file() and (set(kinds) != set(KINDS) or set(modalities) != set(MODALITIES)):
        # A partial rebuild (some modalities or kinds) updates the report of the others.
        previous = json.loads(report_file.read_text()) if report_file.is_file() else {}
        if previous.get("config") == report["config"]:
            report["experts"].update(previous.get("experts", {}))
            report["seconds"].update(previous.get("seconds", {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    for modality in modalities:
        colours_known = modality != "audio" or speech_available()
        t0 = time.perf_counter()
        data = prepare_modality(modality, n_scenes, config.seed, cache_dir, log=log)
        heldout = prepare_modality(modality, eval_items, config.seed + 1000, cache_dir, log=log)
        report["seconds"][f"{modality}/data"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        parts = trainer.stage1(data, colours_known, heldout)
        report["seconds"][f"{modality}/stage1"] = round(time.perf_counter() - t0, 1)
        for training in kinds:
            t0 = time.perf_counter()
            deltas, tuned, log_rows = trainer.stage2(data, parts, training, colours_known)
            name = expert_name(modality, training)
            report["seconds"][f"{name}/stage2"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            deltas, stage3_rows = trainer.stage3(deltas, training, modality)
            report["seconds"][f"{name}/stage3"] = round(time.perf_counter() - t0, 1)
            expert = trainer.make_expert(modality, training, deltas, tuned)
            accuracy = _save_and_score(trainer, expert, out_dir / name, heldout, colours_known, report)
            report["experts"][expert.name] = {"stage1": parts.log, "stage2": log_rows, "stage3": stage3_rows, "heldout": accuracy}
            log(f"{expert.name}: held-out accuracy {accuracy}")
            report_file.write_text(json.dumps(report, indent=1) + "\n")
    report["seconds"]["total"] = round(time.perf_counter() - start, 1)
    report_file.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _save_and_score(trainer: Trainer, expert, target: Path, heldout, colours_known: bool, report: dict,
                    source: Path | None = None) -> dict:
    """Save ``expert`` in fp16 to ``target`` (replacing an older one, unless it is the folder it
    was loaded from) and return its held-out accuracy; the eval time goes into the report."""
    from composition.expert import save_expert

    from .evaluate import heldout_accuracy

    if target.exists() and (source is None or target.resolve() != source.resolve()):
        shutil.rmtree(target)
    save_expert(expert, target, dtype=torch.float16)
    t0 = time.perf_counter()
    accuracy = heldout_accuracy(trainer, target, heldout, colours_known, seed=trainer.config.seed)
    report["seconds"][f"{expert.name}/eval"] = round(time.perf_counter() - t0, 1)
    return accuracy


def apply_stage3(source: Path, out_dir: Path, config: TrainConfig, cache_dir: Path, modalities=MODALITIES, device: str = "cpu",
                 eval_items: int = 42, log=print, kinds=KINDS) -> dict:
    """Stage 3 on the experts saved in ``source`` (those of ``modalities`` and ``kinds``), written to
    ``out_dir`` and scored on held-out scenes. The training report in ``out_dir`` (else the one
    in ``source``) is carried over, so runs for different modalities add up."""
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
            expert.deltas, rows = trainer.stage3(expert.deltas, training, modality)
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
    parser.add_argument("--scenes", type=int, default=800, help="training scenes per modality")
    parser.add_argument("--point-pretrain-steps", type=int, default=TrainConfig.point_pretrain_steps,
                        help="point encoder pre-training steps (a classifier, no LLM pass)")
    parser.add_argument("--stage0-steps", type=int, default=TrainConfig.stage0_steps)
    parser.add_argument("--stage1-steps", type=int, default=TrainConfig.stage1_steps)
    parser.add_argument("--stage2-steps", type=int, default=None,
                        help=f"stage-2 steps for every modality (default {TrainConfig.stage2_steps}, "
                             f"{dict(TrainConfig.stage2_steps_by_modality)} for those modalities)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--stage3-steps", type=int, default=TrainConfig.stage3_steps, help="option-letter lookup steps (text only)")
    parser.add_argument("--stage3-from", default=None, metavar="DIR",
                        help="run only stage 3 on the experts saved in DIR (written to --out)")
    parser.add_argument("--eval-items", type=int, default=42)
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
                              args.eval_items, log=lambda msg: print(msg, flush=True), kinds=tuple(args.kinds))
        print(json.dumps({k: v["heldout"] for k, v in report["experts"].items()}, indent=1))
        print(f"total {report['seconds']['stage3_total']:.0f} s")
        return 0
    report = build(Path(args.out), config, args.scenes, Path(args.cache), tuple(args.modalities), args.device, args.eval_items,
                   log=lambda msg: print(msg, flush=True), kinds=tuple(args.kinds))
    print(json.dumps({k: v["heldout"] for k, v in report["experts"].items()}, indent=1))
    print(f"total {report['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
