"""Reading released checkpoints of other projects safely, and checking them against an architecture.

Every foreign `.pt` / `.bin` goes through `torch.load(..., weights_only=True)`: a file whose
unpickling would run code is refused before anything in it runs. `check_state_dict` then
demands the exact key set and shapes, and finite values, naming what differs.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from .base import EncoderError


def load_torch_file(path: str | Path, what: str) -> object:
    """`torch.load(path, weights_only=True)` on the CPU, with every failure an EncoderError."""
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"{what} weights {str(path)!r} not found; pass the released file with --weights / source")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # needs code to unpickle: refused, nothing ran
        raise EncoderError(f"{what} weights {path.name!r} are not a plain tensor checkpoint (unpickling would need "
                           f"code: {str(exc).splitlines()[0][:200]}); refused. Use the released file, or convert it "
                           "to safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError) as exc:
        raise EncoderError(f"{what} weights {path.name!r} cannot be read ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else 'truncated or corrupt'}); "
                           "download the file again") from None


def load_safetensors_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EncoderError(f"{what} weights {Path(path).name!r} cannot be read ({type(exc).__name__}: "
                           f"{str(exc)[:200]}); download the file again") from None


def tensor_dict(obj: object, what: str) -> dict[str, torch.Tensor]:
    """`obj` as {str: Tensor}, or an EncoderError saying what it is instead."""
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise EncoderError(f"{what}: expected a mapping of parameter names to tensors, got {type(obj).__name__}")
    return dict(obj)


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Same keys, same shapes, finite floating values; the message lists what differs."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise EncoderError(f"{what} does not match the architecture: {'; '.join(parts)}. Is it the right file?")
    for name, want in expected.items():
        got = tuple(state[name].shape)
        if got != tuple(want):
            raise EncoderError(f"{what}: {name} has shape {got}, expected {tuple(want)}; the file is for another "
                               "model size or was damaged")
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            raise EncoderError(f"{what}: {name} holds NaN or infinite values; the file is damaged")


def expected_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The state_dict key -> shape map of `module` (works on the meta device, costs no memory there)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
