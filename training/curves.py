"""Where should the training steps go? Held-out accuracy against stage-2 steps, per variant.

    python -m training.curves --modality image --checkpoints 0 35 70 \\
        --variant recipe --variant targets=mlp --variant rank=8 \\
        --heldout-items 28 --out .cache/curves/image.json --plot .cache/curves/image.png --threads 1
    python -m training.curves --replot .cache/curves/image.json --plot .cache/curves/image.png

One run: the recipe's stage 0 and stage 1 for one modality (``training.recipe``, the same
Trainer the build uses), scored once after stage 0 alone (the projector only, zero deltas:
what word alignment already gives); then stage 2 of one training kind once per variant,
all from that same stage-1 result, scored at the listed steps. A variant changes stage 2
only: ``rank=8``, ``targets=mlp`` (q,k,v,o plus gate/up/down), ``batch=16``,
``schedule=constant`` (warm-up then a flat rate, instead of cosine decay), ``steps=140``,
``lr=1e-3``; ``recipe`` changes nothing. A checkpoint inside a run is scored mid-schedule
(the cosine has not decayed yet): read a variant with ``steps=N`` for what an N-step
schedule ends at. Stage 3 (text-only letter lookup) is not run: it trains the text delta
on option letters, so "common"/"appear" may be a little better after it.

Scoring: the expert at a checkpoint is saved in fp16 (the artifact users get) and asked
one question per held-out scene (``training.evaluate.heldout_accuracy``: kinds in turn,
the same questions for every checkpoint and variant, so differences are paired). The JSON
is rewritten after every point, so a run stopped early still leaves its measurements.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from modalities.checks import check_int

from .data import TRAIN_SCENES
from .recipe import MLP_TARGETS, SCHEDULES, TARGETS, TrainConfig, Trainer, add_stage0_1_arguments

REPO = Path(__file__).resolve().parent.parent
TARGET_SETS = {"qkvo": TARGETS, "mlp": MLP_TARGETS}
HELDOUT_SEED = 7007  # never used by the build (0, 1000), the tests (4242) or training.evaluate's default


class CurveError(ValueError):
    """A bad measurement request (an unknown variant setting, a checkpoint past the run)."""


@dataclass(frozen=True)
class Variant:
    """Stage-2 settings that differ from the recipe's (None: the recipe's)."""

    name: str
    rank: int | None = None
    targets: str | None = None
    batch: int | None = None
    schedule: str | None = None
    steps: int | None = None
    lr: float | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        """'recipe' | 'key=value[,key=value...]' (keys: rank, targets, batch, schedule, steps, lr)."""
        if text == "recipe":
            return cls("recipe")
        values: dict = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            try:
                if not sep:
                    raise ValueError
                if key in ("rank", "batch", "steps"):
                    values[key] = int(value)
                    check_int(values[key], key, 0 if key == "steps" else 1, owner="variant")
                elif key == "lr":
                    values[key] = float(value)
                    if not values[key] > 0:
                        raise ValueError
                elif key == "targets" and value in TARGET_SETS or key == "schedule" and value in SCHEDULES:
                    values[key] = value
                else:
                    raise ValueError
            except ValueError:
                raise CurveError(f"variant {text!r}: cannot read {part!r}; expected 'recipe' or key=value pairs joined by "
                                 f"commas: rank=<int>=1.., batch=<int>=1.., steps=<int>=0.., lr=<float>0.., "
                                 f"targets={'|'.join(TARGET_SETS)}, schedule={'|'.join(SCHEDULES)}.") from None
        return cls(text, **values)

    def config(self, base: TrainConfig) -> TrainConfig:
        changes: dict = {}
        if self.rank is not None:
            # alpha follows the rank, so alpha / rank (the delta's scale) stays the recipe's
            changes.update(rank=self.rank, alpha=base.alpha * self.rank / base.rank)
        if self.batch is not None:
            changes["batch_size"] = self.batch
        if self.steps is not None:
            changes.update(stage2_steps=self.steps, stage2_steps_by_modality=())
        if self.lr is not None:
            changes.update(lr_lora=self.lr, lr_tokens=self.lr)
        return replace(base, **changes)


def score(trainer: Trainer, modality: str, training: str, deltas, parts, heldout, colours_known: bool, seed: int) -> dict:
    """Held-out accuracy (per kind and overall) of the expert these deltas and parts make, saved in fp16."""
    from composition.expert import save_expert

    from .evaluate import heldout_accuracy

    expert = trainer.make_expert(modality, training, deltas, parts)
    with tempfile.TemporaryDirectory(prefix="curve-expert-") as tmp:
        folder = Path(tmp) / expert.name
        save_expert(expert, folder, dtype=torch.float16)
        return heldout_accuracy(trainer, folder, heldout, colours_known, seed=seed)


def measure(trainer: Trainer, data, heldout, modality: str, training: str, variants: list[Variant], checkpoints: list[int],
            colours_known: bool = True, write=lambda result: None, log=print, seed: int = 0) -> dict:
    """Stage 0 + 1 once with ``trainer``'s config, then stage 2 per variant, scored at ``checkpoints``
    (those within a variant's steps, and its last step). ``write(result)`` is called after every point."""
    recipe = trainer.config
    result: dict = {"modality": modality, "training": training, "recipe": asdict(recipe), "heldout_items": len(heldout),
                    "train_scenes": len(data), "checkpoints": checkpoints, "stage0_only": None, "variants": {}, "seconds": {}}

    def zero_deltas_score(parts) -> dict:
        # Stage 2 with no steps: the deltas are initialised with B = 0, so the expert is the base plus its projector.
        trainer.reconfigure(replace(recipe, stage2_steps=0, stage2_steps_by_modality=()))
        deltas, tuned, _ = trainer.stage2(data, parts, training, colours_known)
        trainer.reconfigure(recipe)
        return score(trainer, modality, training, deltas, tuned, heldout, colours_known, seed)

    def after_stage0(parts) -> None:
        t0 = time.perf_counter()
        result["stage0_only"] = zero_deltas_score(parts)
        result["seconds"]["stage0_only_eval"] = round(time.perf_counter() - t0, 1)
        log(f"stage 0 alone: {result['stage0_only']}")
        write(result)

    t0 = time.perf_counter()
    parts = trainer.stage1(data, colours_known, heldout, after_stage0=after_stage0)
    result["seconds"]["stage0+1"] = round(time.perf_counter() - t0 - result["seconds"].get("stage0_only_eval", 0), 1)
    result["stage1_log"] = parts.log
    write(result)
    for variant in variants:
        config = variant.config(recipe)
        steps = config.stage2_steps_for(modality)
        trainer.reconfigure(config, TARGET_SETS[variant.targets or "qkvo"], variant.schedule or "cosine")
        entry = {"settings": {k: v for k, v in asdict(variant).items() if v is not None and k != "name"},
                 "stage2_steps": steps, "points": []}
        result["variants"][variant.name] = entry
        start, eval_seconds = time.perf_counter(), 0.0

        def at_checkpoint(step, deltas, tuned, entry=entry, start=start, name=variant.name):
            nonlocal eval_seconds
            t = time.perf_counter()
            accuracy = score(trainer, modality, training, deltas, tuned, heldout, colours_known, seed)
            eval_seconds += time.perf_counter() - t
            entry["points"].append({"step": step, "accuracy": accuracy,
                                    "train_seconds": round(time.perf_counter() - start - eval_seconds, 1)})
            log(f"{name} step {step}: {accuracy}")
            write(result)

        _, _, log_rows = trainer.stage2(data, parts, training, colours_known, checkpoints=sorted({c for c in checkpoints if c <= steps} | {steps}),
                                        at_checkpoint=at_checkpoint)
        entry["log"] = log_rows
        entry["seconds"] = {"train": round(time.perf_counter() - start - eval_seconds, 1), "eval": round(eval_seconds, 1)}
        write(result)
    trainer.reconfigure(recipe)
    return result


def plot(result: dict, path: Path) -> Path:
    """Overall accuracy against stage-2 steps per variant (stage 0 alone dashed), and the recipe
    variant's per-kind accuracy, in one small PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CurveError("the plot needs matplotlib: pip install matplotlib (the JSON was written).") from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    for name, entry in result["variants"].items():
        points = sorted(entry["points"], key=lambda p: p["step"])
        left.plot([p["step"] for p in points], [p["accuracy"]["overall"] for p in points], marker="o", label=name)
    if result.get("stage0_only"):
        left.axhline(result["stage0_only"]["overall"], color="grey", linestyle="--", label="stage 0 alone")
    left.set(xlabel="stage-2 step", ylabel="held-out exact match", ylim=(0, 1),
             title=f"{result['modality']} {result['training']}: overall ({result['heldout_items']} scenes)")
    left.legend(fontsize=7)
    first = next(iter(result["variants"].values()), None)
    if first:
        points = sorted(first["points"], key=lambda p: p["step"])
        kinds = [k for k in points[0]["accuracy"] if k != "overall"] if points else []
        for kind in kinds:
            right.plot([p["step"] for p in points], [p["accuracy"].get(kind, 0) for p in points], marker=".", label=kind)
        right.set(xlabel="stage-2 step", ylim=(0, 1.05), title=f"per question kind: {next(iter(result['variants']))}")
        right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.curves", description=__doc__.splitlines()[0])
    parser.add_argument("--modality", default="image", choices=("image", "audio", "video", "point"))
    parser.add_argument("--training", default="decoupled", choices=("decoupled", "shared"))
    parser.add_argument("--variant", action="append", default=None, metavar="SPEC",
                        help="'recipe' or key=value[,..] (rank, targets=qkvo|mlp, batch, schedule=cosine|constant, steps, lr); repeatable")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[0, 70, 140], help="stage-2 steps to score at")
    parser.add_argument("--scenes", type=int, default=TRAIN_SCENES, help="training scenes (the build's default)")
    parser.add_argument("--heldout-items", type=int, default=28)
    parser.add_argument("--heldout-seed", type=int, default=HELDOUT_SEED)
    add_stage0_1_arguments(parser)
    parser.add_argument("--cache", default=str(REPO / ".cache" / "training"))
    parser.add_argument("--out", default=str(REPO / ".cache" / "curves" / "curves.json"))
    parser.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    parser.add_argument("--replot", default=None, metavar="JSON", help="only draw the plot of a measurement's JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 beside other work)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    try:
        if args.replot:
            result = json.loads(Path(args.replot).read_text(encoding="utf-8"))
            print(plot(result, Path(args.plot or Path(args.replot).with_suffix(".png"))))
            return 0
        variants = [Variant.parse(v) for v in (args.variant or ["recipe"])]
        if len({v.name for v in variants}) != len(variants):
            raise CurveError(f"variants {[v.name for v in variants]} repeat one; give each once.")
        for name in ("scenes", "heldout_items", "stage0_steps", "stage1_steps", "heldout_seed"):
            check_int(getattr(args, name), f"--{name.replace('_', '-')}", 0 if "steps" in name or "seed" in name else 1)
        if min(args.checkpoints) < 0:
            raise CurveError(f"--checkpoints {args.checkpoints}: steps are 0 or more.")
        if args.threads is not None:
            check_int(args.threads, "--threads", 1)
            torch.set_num_threads(args.threads)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = run(args, variants, out)
        print(plot(result, Path(args.plot or out.with_suffix(".png"))))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args, variants: list[Variant], out: Path) -> dict:
    from composition.base_llm import load_base_llm

    from .data import prepare_modality
    from .render_audio import speech_available

    log = lambda msg: print(msg, flush=True)
    start = time.perf_counter()
    config = TrainConfig(stage0_steps=args.stage0_steps, stage1_steps=args.stage1_steps)
    colours_known = args.modality != "audio" or speech_available()
    data = prepare_modality(args.modality, args.scenes, config.seed, Path(args.cache), log=log)
    heldout = prepare_modality(args.modality, args.heldout_items, args.heldout_seed, Path(args.cache), log=log)
    trainer = Trainer(load_base_llm(device=args.device), config, log=log)
    command = "python -m training.curves " + " ".join(sys.argv[1:])

    def write(result: dict) -> None:
        result.update(command=command, heldout_seed=args.heldout_seed, threads=torch.get_num_threads(),
                      total_seconds=round(time.perf_counter() - start, 1))
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    result = measure(trainer, data, heldout, args.modality, args.training, variants, sorted(set(args.checkpoints)),
                     colours_known, write=write, log=log)
    write(result)
    return result


if __name__ == "__main__":
    sys.exit(main())
