"""Image encoder `clip` from the Hugging Face hub (or a local folder), the LLaVA convention.

LLaVA (and the original ModelCompose image expert) feeds the LLM the patch tokens of the
second-to-last layer of CLIP ViT-L/14-336, without the CLS token: 24 x 24 = 576 tokens of
1024. Needs network on first use; offline users get a clear error pointing to
`efficientnet-lite0`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import Encoder, EncoderError, check_input, freeze, hub_load_error, reject_state_dict
from .registry import register_encoder

DEFAULT_SOURCE = "openai/clip-vit-large-patch14-336"
SELECT_LAYER = -2  # hidden_states[-2]: the LLaVA feature layer
# OpenAI CLIP normalization (CLIPImageProcessor's defaults for these checkpoints)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipVisionEncoder(Encoder):
    """Frozen CLIP vision tower: image (3,H,W) in [0,1], square -> (num_patches, hidden_size)."""

    kind = "clip"

    def __init__(self, model, image_mean, image_std, device: torch.device, dtype: torch.dtype):
        super().__init__(device, dtype)
        self.model = freeze(model).to(device=device, dtype=dtype)
        cfg = model.config
        self.resolution = cfg.image_size
        self.feature_dim = cfg.hidden_size
        self.num_tokens = (cfg.image_size // cfg.patch_size) ** 2
        self.mean = torch.tensor(image_mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(image_std, device=device).view(3, 1, 1)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, kind=self.kind, ndim=3, last_dims=(3, None, None), what="an RGB image of shape (3, H, W) in [0, 1]")
        # LLaVA's "pad" aspect mode (THUNLP-MT/ModelCompose modelcompose/mm_utils.py, expand2square):
        # centre the image on a square filled with the CLIP mean colour (as 8-bit RGB); once square, a
        # plain resize equals CLIPImageProcessor's shortest-side resize + center crop at 336.
        x = pad_to_square(x.to(device=self.device, dtype=torch.float32), self.mean.flatten())[None]
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", antialias=True, align_corners=False)
        x = ((x.clamp(0, 1) - self.mean) / self.std).to(self.dtype)
        hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states[SELECT_LAYER]
        return hidden[0, 1:]  # drop CLS


def pad_to_square(image: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, S, S), S = max(H, W), the image centred on the mean colour."""
    _, h, w = image.shape
    if h == w:
        return image
    side = max(h, w)
    fill = (mean * 255).to(torch.int64).to(image.dtype) / 255  # int(x*255) per channel, as expand2square
    out = fill.view(3, 1, 1).expand(3, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top:top + h, left:left + w] = image
    return out


def _normalization(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The checkpoint's own mean/std from preprocessor_config.json, else the OpenAI constants.

    Read as JSON rather than through CLIPImageProcessor, which wants torchvision.
    """
    try:
        if Path(source).is_dir():
            path = Path(source) / "preprocessor_config.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "preprocessor_config.json"))
        cfg = json.loads(path.read_text())
        return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    except Exception:  # no such file / offline after the weights were cached: every OpenAI CLIP uses these
        return CLIP_MEAN, CLIP_STD


@register_encoder("clip", modality="image", offline=False,
                  description="CLIP vision tower from the hub (LLaVA: layer -2 patch tokens), e.g. 576 x 1024",
                  weight_source=f"Hugging Face hub id or local folder (default {DEFAULT_SOURCE})",
                  num_tokens=576, feature_dim=1024)
def _clip(source, *, device, dtype, state_dict):
    reject_state_dict("clip", state_dict)
    from transformers import CLIPVisionModel

    source = source or DEFAULT_SOURCE
    try:
        model = CLIPVisionModel.from_pretrained(source, dtype=dtype)
    except Exception as exc:  # OSError / connection errors / missing files: all mean "cannot load"
        raise hub_load_error(source, exc, "efficientnet-lite0") from exc
    mean, std = _normalization(source)
    if len(mean) != 3 or len(std) != 3:
        raise EncoderError(f"{source!r} has a non-RGB image normalization (mean {mean}, std {std})")
    return ClipVisionEncoder(model, mean, std, device, dtype)
