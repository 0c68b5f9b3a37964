"""A build's progress on disk, so that one rebuild can span several working sessions.

``python -m training.build_experts --state DIR`` keeps two kinds of file in DIR:

- **loop checkpoints** (``<loop>.loop.safetensors``): the exact state of one training loop
  in the middle (every trained tensor, AdamW's moments and step counts, the batch sampler's
  numpy generator, the step, the running loss, the log), written every ``every`` steps and
  when the build is asked to pause. Restored, the loop continues with the same batches and
  the same learning rates: the result equals an uninterrupted run's bit for bit
  (``tests/test_training_resume.py``).
- **unit results** (``<unit>.result.safetensors``): what a finished stage produced (the
  stage-1 projector and prefix/suffix, the stage-2 deltas, a finished expert's report
  entry), so a resumed build skips it.

``manifest.json`` records the settings the state was made with; a resume with other
settings is refused by name (its steps and batches would not be the same run). Tensors go
through safetensors and everything else through JSON (no pickle); a file is written to a
temporary name and moved into place, so a build killed mid-write leaves the previous
checkpoint intact. Restoring is strict: every key must be one this loop has, of the same
shape, else the checkpoint is refused with the file named.

A pause is asked for with a time budget (``--stop-after SECONDS``) or SIGINT/SIGTERM; a
training loop then saves at the end of its current step and raises ``BuildPaused``, and the
build checks for it between stages too. The short parts that are not loops of this kind
(rendering and encoding the scenes, the point encoder's pre-training, stage 0, scoring) run
to their end first; a build stopped inside one of them redoes it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modalities.checks import check_float, check_int

MANIFEST = "manifest.json"


class BuildPaused(Exception):
    """The build saved its state and stopped on request; rerunning the same command resumes it."""


class StateMismatch(ValueError):
    """A state folder made with other settings, or a checkpoint that does not fit the loop restoring it."""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={"format": "pt", "meta": json.dumps(meta)})
    os.replace(tmp, path)


def as_stored(value):
    """``value`` as JSON gives it back from disk (tuples as lists), to compare with what was saved."""
    return json.loads(json.dumps(value))


def differing(saved: dict, now: dict, keys=None) -> list[str]:
    """The keys (all of both, or ``keys``) whose saved value is not ``now``'s as stored."""
    keys = sorted(set(saved) | set(now)) if keys is None else list(keys)
    return [k for k in keys if saved.get(k) != as_stored(now.get(k))]


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, meta


@dataclass
class Resumed:
    """Where a restored loop continues: the next step, the running loss, the log so far, the
    seconds the loop had already run."""

    step: int
    running: float | None
    log: list[dict]
    seconds: float


@dataclass
class BuildState:
    """The folder a build keeps its progress in (see the module docstring).

    Args:
        folder: the state folder (created).
        settings: what makes two runs the same run (the TrainConfig, scenes, eval items);
            a folder made with other settings is refused.
        every: save a loop checkpoint every this many steps.
        stop_after: ask every loop to pause after this many seconds from now (None: never).
    """

    folder: Path
    settings: dict
    every: int = 10
    stop_after: float | None = None
    started: float = field(default_factory=time.monotonic)
    _signalled: bool = False

    def __post_init__(self) -> None:
        self.every = check_int(self.every, "every", 1, owner="BuildState")
        if self.stop_after is not None:
            self.stop_after = check_float(self.stop_after, "stop_after", 0, open_min=True, owner="BuildState")
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / MANIFEST
        settings = as_stored(self.settings)
        if manifest.is_file():
            saved = json.loads(manifest.read_text()).get("settings")
            if saved != settings:
                changed = differing(saved or {}, settings)
                raise StateMismatch(f"the build state in {self.folder} was made with other settings (differing: "
                                    f"{', '.join(changed)}); resume with the same settings, or start afresh with "
                                    f"--fresh (deletes that state).")
        else:
            manifest.write_text(json.dumps({"settings": settings}, indent=1) + "\n")

    def bind(self, key: str, value) -> None:
        """Record a setting the build learns only once it runs (the base's sha256, whether speech
        is synthesised) or check it against the one recorded: refused by name when it differs."""
        manifest = self.folder / MANIFEST
        data = json.loads(manifest.read_text())
        value = as_stored(value)
        bound = data.setdefault("bound", {})
        if key in bound and bound[key] != value:
            raise StateMismatch(f"the build state in {self.folder} was made with another {key} ({bound[key]!r}, now "
                                f"{value!r}); resume where it was made, or start afresh with --fresh.")
        if key not in bound:
            bound[key] = value
            manifest.write_text(json.dumps(data, indent=1) + "\n")

    def check_pause(self, where: str) -> None:
        """Between stages: raise ``BuildPaused`` when a pause was asked for (everything before is saved)."""
        if self.pause_requested():
            raise BuildPaused(f"before {where} (everything before it is saved)")

    @staticmethod
    def clear(folder: Path) -> None:
        """Delete a state folder's files (``--fresh``), and only those: a folder without a
        manifest is not a build state and is refused."""
        folder = Path(folder)
        if not folder.exists():
            return
        if not (folder / MANIFEST).is_file():
            raise StateMismatch(f"{folder} is not a build state (no {MANIFEST}); --fresh deletes only build states. "
                                "Pass the folder a build made with --state.")
        for path in list(folder.glob("*.loop.safetensors")) + list(folder.glob("*.result.safetensors")) + [folder / MANIFEST]:
            path.unlink()

    # --- pausing ---------------------------------------------------------------
    def catch_signals(self) -> None:
        """SIGINT / SIGTERM ask for a pause at the end of the current step (a second one kills)."""
        def ask(signum, _frame):
            if self._signalled:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            self._signalled = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, ask)

    def pause_requested(self) -> bool:
        over = self.stop_after is not None and time.monotonic() - self.started >= self.stop_after
        return self._signalled or over

    # --- loops -----------------------------------------------------------------
    def loop_path(self, loop: str) -> Path:
        return self.folder / f"{_slug(loop)}.loop.safetensors"

    def save_loop(self, loop: str, groups: list[list[torch.nn.Parameter]], optimizer: torch.optim.Optimizer,
                  rng: np.random.Generator, resumed: Resumed) -> Path:
        """Write the loop's exact state (``resumed.step`` is the next step to run)."""
        tensors = {f"param.{g}.{i}": p for g, group in enumerate(groups) for i, p in enumerate(group)}
        index = {id(p): (g, i) for g, group in enumerate(groups) for i, p in enumerate(group)}
        for p, state in optimizer.state.items():
            g, i = index[id(p)]
            for key, value in state.items():
                tensors[f"opt.{g}.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        meta = {"loop": loop, "step": resumed.step, "running": resumed.running, "log": resumed.log,
                "seconds": resumed.seconds, "rng": rng.bit_generator.state}
        path = self.loop_path(loop)
        _write_atomic(path, tensors, meta)
        return path

    def restore_loop(self, loop: str, groups: list[list[torch.nn.Parameter]], optimizer: torch.optim.Optimizer,
                     rng: np.random.Generator) -> Resumed | None:
        """Load the loop's checkpoint into ``groups``, ``optimizer`` and ``rng``; None when there is none."""
        path = self.loop_path(loop)
        if not path.is_file():
            return None
        tensors, meta = _read(path)
        expected = {f"param.{g}.{i}": p for g, group in enumerate(groups) for i, p in enumerate(group)}
        missing = sorted(set(expected) - set(tensors))
        unknown = sorted(k for k in tensors if k not in expected and not re.fullmatch(r"opt\.\d+\.\d+\.\w+", k))
        if meta.get("loop") != loop or missing or unknown:
            raise StateMismatch(f"{path} is not a checkpoint of the loop {loop!r} (missing {missing[:3]}, unknown "
                                f"{unknown[:3]}); start afresh with --fresh.")
        for key, p in expected.items():
            if tuple(tensors[key].shape) != tuple(p.shape) or tensors[key].dtype != p.dtype:
                raise StateMismatch(f"{path}: {key} has shape {tuple(tensors[key].shape)} ({tensors[key].dtype}), the "
                                    f"loop's tensor {tuple(p.shape)} ({p.dtype}); start afresh with --fresh.")
        if int(meta["step"]) > 0:  # after a step AdamW has a state for every parameter: all of it must be there
            for key, p in expected.items():
                for name in ("step", "exp_avg", "exp_avg_sq"):
                    moment = tensors.get(f"opt.{key[6:]}.{name}")
                    if moment is None or (name != "step" and tuple(moment.shape) != tuple(p.shape)):
                        raise StateMismatch(f"{path}: AdamW's {name} of {key} is missing or mis-shaped; start afresh "
                                            "with --fresh.")
        with torch.no_grad():
            for key, p in expected.items():
                p.copy_(tensors[key].to(p.dtype))
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, g, i, name = key.split(".", 3)
                g, i = int(g), int(i)
                if g >= len(groups) or i >= len(groups[g]):
                    raise StateMismatch(f"{path}: {key} names a tensor the loop does not have; start afresh with --fresh.")
                param = groups[g][i]
                # AdamW keeps its step counts on the CPU and its moments beside the parameter.
                optimizer.state[param][name] = value if name == "step" else value.to(param.device)
        rng.bit_generator.state = meta["rng"]
        return Resumed(int(meta["step"]), meta["running"], list(meta["log"]), float(meta["seconds"]))

    def discard_loop(self, loop: str) -> None:
        self.loop_path(loop).unlink(missing_ok=True)

    # --- unit results ----------------------------------------------------------
    def result_path(self, unit: str) -> Path:
        return self.folder / f"{_slug(unit)}.result.safetensors"

    def save_result(self, unit: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        _write_atomic(self.result_path(unit), tensors, {"unit": unit, **meta})

    def load_result(self, unit: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        path = self.result_path(unit)
        if not path.is_file():
            return None
        tensors, meta = _read(path)
        if meta.get("unit") != unit:
            raise StateMismatch(f"{path} holds {meta.get('unit')!r}, not {unit!r}; start afresh with --fresh.")
        return tensors, meta
