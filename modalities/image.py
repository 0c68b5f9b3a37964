"""Image files -> float32 (3, S, S) in [0, 1], RGB, padded to a square.

Only a maximum side is enforced here (`max_side`, default 1024); encoders resize to their
own input size. The square padding uses the ImageNet mean colour by default, which the
encoders' normalisation maps to zero, as LLaVA's `expand2square` does with CLIP's mean:
the padding then carries (almost) no signal.

Those are the studio's defaults (the bundled experts and the previews read that form). An
encoder that was trained on another decoding asks for it through its `input_limits`
(`modalities/encoders/registry.py`), e.g. the paper's CLIP expert:
`alpha="drop", max_side=None, pad_square=False` gives the file exactly as the original's
`Image.open(path).convert("RGB")` (THUNLP-MT/ModelCompose `modelcompose/data/multimodal_dataset.py`,
`get_modal_inputs`): every PIL mode through PIL's own RGB conversion (transparency dropped, the
colours under it kept), full resolution, not padded; the encoder pads and resizes it itself.
The one rule both forms share: an EXIF orientation is applied (the original reads the stored,
unrotated pixels); the note says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import MB, Limits, LoadedInput, Modality, ModalityError, check_positive
from .registry import register_modality
from .sniff import Sniffed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
ALPHA_RULES = ("white", "drop")
DROPPED_ALPHA_NOTE = "transparency was dropped (the colours under it kept), as the original's convert('RGB') does"


@dataclass(frozen=True)
class ImageLimits(Limits):
    """max_pixels: refuse images with more pixels than this (checked from the header, before decoding);
    max_side: downscale so the longest side is at most this (None: never downscale);
    pad_color: RGB in [0, 1] for the square padding; pad_square: False leaves the image its own shape;
    alpha: "white" composites transparency on white, "drop" is PIL's convert("RGB") for every mode
    (the original ModelCompose rule: transparency dropped, 16-bit greyscale clipped as PIL does);
    thumbnail_side: longest side of the preview thumbnail."""

    max_bytes: int = 20 * MB
    max_pixels: int = 40_000_000
    max_side: int | None = 1024
    pad_color: tuple[float, float, float] = IMAGENET_MEAN
    pad_square: bool = True
    alpha: str = "white"
    thumbnail_side: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_pixels", "thumbnail_side"):
            check_positive(self, name, int)
        if self.max_side is not None:
            check_positive(self, "max_side", int)
        if not isinstance(self.pad_square, bool):
            raise ModalityError(f"ImageLimits.pad_square must be True or False, got {self.pad_square!r}")
        if self.alpha not in ALPHA_RULES:
            raise ModalityError(f"ImageLimits.alpha must be one of {ALPHA_RULES}, got {self.alpha!r}")
        pad = self.pad_color
        if not (isinstance(pad, tuple) and len(pad) == 3 and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in pad)):
            raise ModalityError(f"ImageLimits.pad_color must be an (r, g, b) tuple of numbers in [0, 1], got {pad!r}")


class ImageModality(Modality):
    name = "image"
    label = "image"
    what = "an image"
    extensions = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
    content_kinds = frozenset({"image"})
    limits_type = ImageLimits

    def _fix_hint(self) -> str:
        return "Downscale or re-compress the image (e.g. save it as a JPEG) and upload it again."

    def _decode(self, file: Path, sniffed: Sniffed) -> LoadedInput:
        limits: ImageLimits = self.limits
        notes: list[str] = []
        with self._open_checked(file) as im:
            meta, oriented = self._read_first_frame(im, notes)
        rgb, alpha_note = _to_rgb_array(oriented) if limits.alpha == "white" else _pil_rgb_array(oriented)
        if alpha_note:
            notes.append(alpha_note)
        tensor, scaled_size = _downscale(rgb, limits.max_side)
        if scaled_size != meta["oriented_size"]:
            notes.append(f"image downscaled from {meta['oriented_size'][0]}×{meta['oriented_size'][1]} to "
                         f"{scaled_size[0]}×{scaled_size[1]}")
        meta["size"] = scaled_size
        if not limits.pad_square:
            return LoadedInput(self.name, tensor, file.name, notes, meta)
        square = pad_to_square(tensor, limits.pad_color)
        meta["padded_side"] = square.shape[-1]
        meta["pad_color"] = limits.pad_color
        return LoadedInput(self.name, square, file.name, notes, meta)

    def _open_checked(self, file: Path) -> Any:
        """Open lazily (header only) and refuse images over the pixel limit before any pixel is decoded.

        PIL's own guard is an extra net: it raises DecompressionBombError at open for absurd sizes
        (> 2x Image.MAX_IMAGE_PIXELS). Its warning is not escalated with warnings.catch_warnings,
        which is not thread-safe; our limit, below PIL's warning threshold by default, refuses
        those images anyway.
        """
        from PIL import Image

        limits: ImageLimits = self.limits
        try:
            im = Image.open(file)
        except Image.DecompressionBombError:
            raise ModalityError(f"{file.name} declares an enormous size (more than {limits.max_pixels:,} pixels) "
                                f"and was refused without decoding it. {self._fix_hint()}") from None
        width, height = im.size
        if width <= 0 or height <= 0 or width * height > limits.max_pixels:
            im.close()
            if width <= 0 or height <= 0:
                raise ModalityError(f"{file.name} declares an empty size ({width}×{height}); it is corrupt.")
            raise ModalityError(f"{file.name} is {width}×{height} = {width * height / 1e6:.1f} megapixels; "
                                f"the limit is {limits.max_pixels / 1e6:.0f} megapixels. {self._fix_hint()}")
        return im

    def _read_first_frame(self, im: Any, notes: list[str]) -> tuple[dict[str, Any], Any]:
        """Decode the first frame with EXIF orientation applied; returns (meta, oriented copy)."""
        from PIL import ImageOps

        width, height = im.size
        meta: dict[str, Any] = {"format": im.format, "mode": im.mode, "original_size": (width, height)}
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            meta["frames"] = frames
            notes.append(f"animated image with {frames} frames: only the first frame is used")
            im.seek(0)
        if im.format == "JPEG" and self.limits.max_side is not None:
            # Decode big JPEGs at a reduced DCT scale: much faster, and we downscale anyway.
            im.draft("RGB", (self.limits.max_side, self.limits.max_side))
        orientation = _exif_orientation(im)
        im.load()
        oriented = ImageOps.exif_transpose(im)  # always a copy, so `im` may be closed after
        # Orientations 5-8 swap width and height (rotations by 90/270 degrees, transposes).
        meta["exif_orientation"] = orientation or 1
        meta["oriented_size"] = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        if orientation not in (None, 1):
            original = " (the original code reads the stored, unrotated pixels)" if self.limits.alpha == "drop" else ""
            notes.append(f"EXIF orientation {orientation} applied{original}")
        return meta, oriented

    def preview(self, loaded: LoadedInput) -> dict[str, Any]:
        from .previews import image_thumbnail

        self._check_loaded(loaded)
        return {"thumbnail": image_thumbnail(loaded.data, self.limits.thumbnail_side)}


def _exif_orientation(im: Any) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block is not a reason to refuse the image
        return None


def _to_rgb_array(im: Any) -> tuple[np.ndarray, str | None]:
    """Any PIL mode -> float32 (H, W, 3) in [0, 1]. Transparency is composited on white.

    16-bit and 32-bit greyscale are scaled by their bit depth; PIL's own convert("RGB")
    would clip them to 255 and return a white image.
    """
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(im, dtype=np.float32)
        grey = np.clip(grey / 65535.0, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode == "F":
        grey = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        peak = float(grey.max()) if grey.size else 1.0
        grey = np.clip(grey / peak if peak > 1.0 else grey, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2), None
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() < 255:
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, rgba).convert("RGB")
            return np.asarray(rgb, dtype=np.float32) / 255.0, "transparent areas were composited on white"
        im = rgba
    rgb = im.convert("RGB") if im.mode != "RGB" else im
    return np.asarray(rgb, dtype=np.float32) / 255.0, None


def _pil_rgb_array(im: Any) -> tuple[np.ndarray, str | None]:
    """The original's rule: PIL's own convert("RGB") whatever the mode -> float32 (H, W, 3) in [0, 1].

    Transparency is dropped (the stored colours under it are kept); the note says so when some
    pixel was actually transparent, so an imported expert's card can tell the user.
    """
    note = None
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        alpha = np.asarray(im.convert("RGBA").getchannel("A"))
        if alpha.size and alpha.min() < 255:
            note = DROPPED_ALPHA_NOTE
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8).astype(np.float32) / 255.0, note


def _downscale(rgb: np.ndarray, max_side: int | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """(H, W, 3) array -> (3, h, w) tensor with max(h, w) <= max_side (antialiased, deterministic; None: as is)."""
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
    height, width = tensor.shape[1:]
    longest = max(height, width)
    if max_side is not None and longest > max_side:
        scale = max_side / longest
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        tensor = torch.nn.functional.interpolate(tensor[None], size=size, mode="bilinear",
                                                 antialias=True, align_corners=False)[0].clamp_(0.0, 1.0)
    return tensor.to(torch.float32).contiguous(), (int(tensor.shape[2]), int(tensor.shape[1]))


def pad_to_square(image: torch.Tensor, color: tuple[float, float, float]) -> torch.Tensor:
    """(3, H, W) -> (3, S, S), S = max(H, W), the image centred on a `color` background."""
    _, height, width = image.shape
    side = max(height, width)
    if height == width:
        return image
    out = torch.tensor(color, dtype=image.dtype).view(3, 1, 1).expand(3, side, side).clone()
    top, left = (side - height) // 2, (side - width) // 2
    out[:, top:top + height, left:left + width] = image
    return out


register_modality(ImageModality())
