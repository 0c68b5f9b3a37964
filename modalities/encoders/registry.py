"""Kind name -> factory; the registry is the only list of encoder kinds.

`get_encoder` caches instances per (kind, source, device, dtype[, state_dict digest]) for the
process, so several experts that use the same encoder share one copy of its weights.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from ..checks import check_int

from .base import Encoder, EncoderError, resolve_device_dtype

Factory = Callable[..., Encoder]


@dataclass(frozen=True)
class EncoderSpec:
    """What the listing (`python -m composition encoders`) and the decoders need to know about a kind.

    `num_tokens` / `feature_dim` are the ONE place a kind's feature shape is declared: the shape
    its default (released) weights produce; None where it depends on the weights given (e.g. a
    hub id). `input_limits` are the decoder limits the kind was trained with (e.g. Point-BERT's
    8192 points), applied by whoever decodes files for it.
    """
    kind: str
    modality: str  # "image" | "video" | "audio" | "point"
    factory: Factory
    offline: bool  # True: loads with no network (bundled package or defined here)
    description: str
    weight_source: str = ""  # where the weights come from, in words a user can act on
    num_tokens: int | None = None
    feature_dim: int | None = None
    input_limits: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("num_tokens", "feature_dim"):
            value = getattr(self, name)
            if value is not None:
                check_int(value, f"EncoderSpec({self.kind!r}).{name}", minimum=1)


_REGISTRY: dict[str, EncoderSpec] = {}
_CACHE: dict[tuple, Encoder] = {}
_LOCK = threading.RLock()  # gradio handlers run in threads; re-entrant: a factory may get another encoder


def register_encoder(kind: str, *, modality: str, offline: bool, description: str, weight_source: str = "",
                     num_tokens: int | None = None, feature_dim: int | None = None,
                     input_limits: Mapping[str, object] | None = None):
    """Decorator: `@register_encoder("clip", modality="image", offline=False, description=...)`.

    The factory is called as `factory(source, device=..., dtype=..., state_dict=...)`. The
    optional fields fill the listing (see `EncoderSpec`); older registrations without them
    still work.
    """
    def decorate(factory: Factory) -> Factory:
        if kind in _REGISTRY:
            raise ValueError(f"encoder kind {kind!r} is registered twice")
        _REGISTRY[kind] = EncoderSpec(kind, modality, factory, offline, description, weight_source,
                                      num_tokens, feature_dim, dict(input_limits or {}))
        return factory
    return decorate


def list_encoder_specs(modality: str | None = None) -> list[EncoderSpec]:
    """Specs of the registered kinds (sorted by kind), optionally only one modality's."""
    return [_REGISTRY[k] for k in list_encoder_kinds(modality)]


def list_encoder_kinds(modality: str | None = None) -> list[str]:
    """Registered kinds, optionally only those for one modality."""
    return sorted(k for k, spec in _REGISTRY.items() if modality is None or spec.modality == modality)


def encoder_spec(kind: str) -> EncoderSpec:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise EncoderError(f"unknown encoder kind {kind!r}; accepted kinds: {', '.join(list_encoder_kinds())}") from None


def state_dict_digest(state_dict: Mapping[str, torch.Tensor] | None) -> str | None:
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
    key = (kind, source, str(device), dtype, state_dict_digest(state_dict))
    with _LOCK:
        if key not in _CACHE:
            encoder = spec.factory(source, device=device, dtype=dtype, state_dict=state_dict)
            if source is None and state_dict is None:
                _check_declared_shape(spec, encoder)
            _CACHE[key] = encoder
        return _CACHE[key]


def _check_declared_shape(spec: EncoderSpec, encoder: Encoder) -> None:
    """The default weights must give the shape the spec declares (the listing and experts rely on it)."""
    for name in ("num_tokens", "feature_dim"):
        declared, actual = getattr(spec, name), getattr(encoder, name)
        if declared is not None and declared != actual:  # a registration bug, not a user error
            raise RuntimeError(f"encoder {spec.kind!r} declares {name}={declared} but its default weights give {actual}")


def clear_encoder_cache() -> None:
    """Forget cached encoders (tests; freeing memory after switching experts)."""
    with _LOCK:
        _CACHE.clear()
