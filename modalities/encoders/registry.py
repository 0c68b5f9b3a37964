"""Kind name -> factory; the registry is the only list of encoder kinds.

`get_encoder` caches instances per (kind, source, device, dtype[, state_dict digest]) for the
process, so several experts that use the same encoder share one copy of its weights.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .base import Encoder, EncoderError, resolve_device_dtype

Factory = Callable[..., Encoder]


@dataclass(frozen=True)
class EncoderSpec:
    kind: str
    modality: str  # "image" | "video" | "audio" | "point"
    factory: Factory
    offline: bool  # True: loads with no network (bundled package or defined here)
    description: str


_REGISTRY: dict[str, EncoderSpec] = {}
_CACHE: dict[tuple, Encoder] = {}
_LOCK = threading.RLock()  # gradio handlers run in threads; re-entrant: a factory may get another encoder


def register_encoder(kind: str, *, modality: str, offline: bool, description: str):
    """Decorator: `@register_encoder("clip", modality="image", offline=False, description=...)`.

    The factory is called as `factory(source, device=..., dtype=..., state_dict=...)`.
    """
    def decorate(factory: Factory) -> Factory:
        if kind in _REGISTRY:
            raise ValueError(f"encoder kind {kind!r} is registered twice")
        _REGISTRY[kind] = EncoderSpec(kind, modality, factory, offline, description)
        return factory
    return decorate


def list_encoder_kinds(modality: str | None = None) -> list[str]:
    """Registered kinds, optionally only those for one modality."""
    return sorted(k for k, spec in _REGISTRY.items() if modality is None or spec.modality == modality)


def encoder_spec(kind: str) -> EncoderSpec:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise EncoderError(f"unknown encoder kind {kind!r}; accepted kinds: {', '.join(list_encoder_kinds())}") from None


def _state_dict_digest(state_dict: Mapping[str, torch.Tensor] | None) -> str | None:
    """Content hash, so two experts with identical trained encoder weights share one instance."""
    if state_dict is None:
        return None
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def get_encoder(kind: str, source: str | None = None, *, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, state_dict: Mapping[str, torch.Tensor] | None = None) -> Encoder:
    """The frozen encoder `kind` (loaded from `source`, or the kind's default), cached per process.

    Args:
        kind: a registered kind (see `list_encoder_kinds()`).
        source: hub id, local folder or file; None = the kind's bundled default.
        device: where the encoder runs.
        dtype: compute dtype; None = fp32 on CPU, bf16 on CUDA. Features are always float32.
        state_dict: trained weights for encoders defined here (e.g. `point-fps-knn`).
    Returns:
        An `Encoder` with `kind`, `feature_dim`, `num_tokens` and `encode(x)`.
    """
    spec = encoder_spec(kind)
    device, dtype = resolve_device_dtype(device, dtype)
    key = (kind, source, str(device), dtype, _state_dict_digest(state_dict))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = spec.factory(source, device=device, dtype=dtype, state_dict=state_dict)
        return _CACHE[key]


def clear_encoder_cache() -> None:
    """Forget cached encoders (tests; freeing memory after switching experts)."""
    with _LOCK:
        _CACHE.clear()
