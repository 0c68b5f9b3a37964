"""What every frozen encoder shares: the error type, device/dtype defaults, the `encode` contract.

An encoder turns the validated tensor of ONE input (see `modalities/<modality>.py`) into a
fixed-size matrix of features `(num_tokens, feature_dim)`; the projector of an expert maps
those rows to LLM embeddings, so `num_tokens` must not depend on the input.
"""
from __future__ import annotations

import torch
from torch import nn

from ..checks import UserError


class EncoderError(UserError):
    """A user-facing encoder problem: unknown kind, bad input, weights that cannot be loaded."""


def resolve_device_dtype(device: str | torch.device, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """`dtype=None` means fp32 on CPU (bf16 matmuls are slow there) and bf16 on CUDA."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"device {str(device)!r} was requested but CUDA is not available; use device='cpu'")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise EncoderError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    return device, dtype


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm uses its running stats, no dropout) and no gradients: encoders are frozen."""
    module.eval()
    module.requires_grad_(False)
    return module


def check_input(x: torch.Tensor, *, kind: str, ndim: int, last_dims: tuple[int | None, ...], what: str) -> None:
    """Reject inputs that are not the validated tensor the modality loader produces.

    `last_dims` gives the required trailing sizes (None = any size), e.g. `(3, None, None)` for an image.
    """
    if not isinstance(x, torch.Tensor):
        raise EncoderError(f"encoder {kind!r} expects a torch.Tensor ({what}), got {type(x).__name__}")
    shape_ok = x.ndim == ndim and all(want is None or got == want for got, want in zip(x.shape[-len(last_dims):], last_dims))
    if not shape_ok:
        raise EncoderError(f"encoder {kind!r} expects {what}, got a tensor of shape {tuple(x.shape)}; "
                           "load the file with the modality loader (modalities/) first")
    if not x.is_floating_point():
        raise EncoderError(f"encoder {kind!r} expects a floating tensor ({what}), got dtype {x.dtype}")
    if x.numel() == 0:
        raise EncoderError(f"encoder {kind!r} got an empty tensor of shape {tuple(x.shape)}")


class Encoder:
    """Base class: subclasses set `kind`, `feature_dim`, `num_tokens` and implement `_encode`.

    `encode` adds what every encoder promises: no autograd graph, float32 output of the
    declared shape on the encoder's device.
    """

    kind: str = ""
    feature_dim: int = 0
    num_tokens: int = 0
    pretrained: bool = True

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # no_grad rather than inference_mode: the features feed a trainable projector, and
    # inference-mode tensors cannot be saved for its backward pass.
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features of one input: float32 `(num_tokens, feature_dim)`, deterministic, no grad."""
        feats = self._encode(x).float()
        expected = (self.num_tokens, self.feature_dim)
        if tuple(feats.shape) != expected:  # an internal bug, not a user error
            raise RuntimeError(f"encoder {self.kind!r} produced {tuple(feats.shape)}, expected {expected}")
        return feats

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, num_tokens={self.num_tokens}, "
                f"feature_dim={self.feature_dim}, device={str(self.device)!r}, dtype={self.dtype})")


def reject_state_dict(kind: str, state_dict) -> None:
    """Pretrained encoders load their own weights; a state_dict for them is a caller mistake."""
    if state_dict is not None:
        raise EncoderError(f"encoder {kind!r} loads its own pretrained weights and takes no state_dict; "
                           "pass state_dict only to encoders trained here (e.g. 'point-fps-knn')")


def hub_load_error(source: str, exc: Exception, offline_kind: str) -> EncoderError:
    """The one message for "a hub encoder could not be loaded", with the offline alternative."""
    if source.startswith(("/", ".", "~")):
        where = f"the local folder {source!r}"
    else:
        where = f"{source!r} from the Hugging Face hub"
    return EncoderError(f"could not load {where} ({type(exc).__name__}: {exc}): no network or not a model "
                        f"folder? Use the offline kind {offline_kind!r} or pass a local folder")
