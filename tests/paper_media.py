"""Shared by the paper-encoder tests: the real media files, the original's preprocessing written out from
its definitions (references to compare against), and a tiny random CLIP in the hub's folder layout.

The references are written here from the original code's rules (our code, their facts):
  * image: THUNLP-MT/ModelCompose `modelcompose/data/multimodal_dataset.py` (`Image.open(f).convert('RGB')`),
    `modelcompose/mm_utils.py` (`expand2square`, `process_images` with 'pad'), `clip_encoder.py`
    (`CLIPImageProcessor.from_pretrained`); the processor as transformers 4.31 ran it (PIL bicubic on the
    8-bit image, shortest side, centre crop `(h - crop) // 2`, x/255 in float32, (x - mean) / std);
  * video: PKU-YuanGroup/LanguageBind `languagebind/video/processing_video.py` (decord branch:
    `np.linspace(0, len(vr) - 1, 8, dtype=int)`, x / 255, NormalizeVideo, pytorchvideo ShortSideScale
    (bilinear, long side floored), CenterCropVideo (offsets rounded)), the random flip left out;
  * point cloud: PointLLM `pc_norm` (numpy: centroid, farthest point scaled to 1) on the 8192 points.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from tests.media_factory import media_assets

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# openai/clip-vit-large-patch14-336's preprocessor_config.json (the old feature-extractor format it ships in)
OPENAI_CLIP_336_PREPROCESSOR = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                                "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN),
                                "image_std": list(CLIP_STD), "resample": 3, "size": 336}


def media_files(kind: str, extra: tuple[str, ...] = ()) -> list[Path]:
    """Every file of gradio's media_assets/<kind> plus the repository's examples named in `extra`."""
    root = media_assets()
    files = sorted(p for p in (root / kind).iterdir() if p.is_file()) if root is not None else []
    return files + [EXAMPLES / name for name in extra]


IMAGES = ("image-example.png",)
VIDEOS = ("video-example.mp4",)
POINTS = ("point-example.npy",)


# --- the original's image path ------------------------------------------------------------------------

def reference_expand2square(image, background):
    """mm_utils.expand2square, rule for rule."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    if width > height:
        result = Image.new(image.mode, (width, width), background)
        result.paste(image, (0, (width - height) // 2))
        return result
    result = Image.new(image.mode, (height, height), background)
    result.paste(image, ((height - width) // 2, 0))
    return result


def reference_clip_processor(image, size: int = 336, crop: int = 336, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """CLIPImageProcessor.preprocess of transformers 4.31 (the original's version) written out: (3, crop, crop)."""
    from PIL import Image

    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = np.asarray(image.resize((new_w, new_h), resample=Image.BICUBIC))  # uint8 (H, W, 3)
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    cropped = resized[top:top + crop, left:left + crop].astype(np.float32) * np.float32(1 / 255)
    normed = (cropped - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return normed.transpose(2, 0, 1)


def reference_clip_pixels(path, processor) -> torch.Tensor:
    """The original's whole image path, with the processor given (CLIPImageProcessor of the checkpoint)."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    square = reference_expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
    return processor.preprocess(square, return_tensors="pt")["pixel_values"][0]


# --- the original's video path ------------------------------------------------------------------------

def reference_video_frames(path, count: int = 8) -> tuple[np.ndarray, torch.Tensor]:
    """(indices, uint8 frames (T, H, W, 3)) as load_and_transform_video's decord branch reads them."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    indices = np.linspace(0, len(reader) - 1, count, dtype=int)
    return indices, torch.from_numpy(reader.get_batch(indices).asnumpy())


def reference_video_pixels(path, size: int = 224, count: int = 8) -> torch.Tensor:
    """get_video_transform (decord) on those frames, without the random flip: (T, 3, size, size)."""
    _, frames = reference_video_frames(path, count)
    x = frames.permute(3, 0, 1, 2) / 255.0  # (C, T, H, W), as video_data.permute(3, 0, 1, 2)
    x = (x - torch.tensor(CLIP_MEAN).view(3, 1, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1, 1)
    _, _, h, w = x.shape
    if w < h:
        new_h, new_w = int(math.floor((float(h) / w) * size)), size
    else:
        new_h, new_w = size, int(math.floor((float(w) / h) * size))
    x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return x[..., top:top + size, left:left + size].permute(1, 0, 2, 3).contiguous()


# --- the original's point path ------------------------------------------------------------------------

def reference_pc_norm(cloud: np.ndarray) -> np.ndarray:
    """PointLLM's pc_norm (numpy, as its dataset applies it)."""
    xyz, other = cloud[:, :3], cloud[:, 3:]
    xyz = xyz - np.mean(xyz, axis=0)
    return np.concatenate((xyz / np.max(np.sqrt(np.sum(xyz ** 2, axis=1))), other), axis=1)


# --- a tiny CLIP in the hub folder layout ---------------------------------------------------------------

def write_tiny_clip(folder: Path, hidden: int = 24, seed: int = 0) -> Path:
    """A random CLIPVisionModel at the released input size (336, patch 14: 576 patch tokens) but `hidden` wide,
    saved with save_pretrained beside the released preprocessor_config.json."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                              image_size=336, patch_size=14, projection_dim=16)
    model = CLIPVisionModel(config).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(OPENAI_CLIP_336_PREPROCESSOR, indent=2))
    return folder


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
