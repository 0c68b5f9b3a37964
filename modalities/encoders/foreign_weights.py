"""Reading released checkpoints of other projects safely, and checking them against an architecture.

Every foreign `.pt` / `.bin` goes through `torch.load(..., weights_only=True)`: a file whose
unpickling would run code is refused before anything in it runs. `check_state_dict` then
demands the exact key set and shapes, and finite values, naming what differs.
"""
from __future__ import annotations

import pickle
import re
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


# --- weights that live in a Hugging Face hub repository ------------------------------------------------

_HUB_REFERENCE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::(?P<file>[\w.-][\w./-]*))?$")


def hub_reference(source: str) -> tuple[str, str | None] | None:
    """``("owner/name", "path/in/repo" or None)`` when ``source`` names a hub repository (``owner/name`` or
    ``owner/name:path/in/repo``) rather than a local path that exists; None for a local path."""
    if not isinstance(source, str):
        return None
    try:
        if Path(source).expanduser().exists():
            return None
    except (OSError, ValueError, RuntimeError):  # a NUL byte, an unknown ~user: let the loader refuse it
        return None
    match = _HUB_REFERENCE.match(source)
    if match is None or ".." in (match["file"] or "").split("/"):
        return None
    return match["repo"], match["file"]


def hub_file(repo: str, filename: str, what: str) -> Path:
    """One file of a hub repository, through huggingface_hub's cache (``hf_hub_download``: with
    ``HF_HUB_OFFLINE=1`` it is read from the cache only)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # offline and not cached, unknown repo or file, network: all mean "not available"
        raise EncoderError(f"{what}: {filename} of the hub repository {repo} is not available ({type(exc).__name__}); "
                           "without network it must already be in the Hugging Face cache, or pass a local "
                           "file or folder instead") from None
