"""Image encoder `clip` from the Hugging Face hub (or a local folder), the LLaVA convention.

LLaVA (and the original ModelCompose image expert) feeds the LLM the patch tokens of the
second-to-last layer of CLIP ViT-L/14-336, without the CLS token: 24 x 24 = 576 tokens of
1024. Needs network on first use (or the hub cache); offline users get a clear error pointing
to `efficientnet-lite0`.

Preprocessing, exactly the original's (THUNLP-MT/ModelCompose; facts read there, code ours):
  * decoding (`modelcompose/data/multimodal_dataset.py`, `get_modal_inputs`):
    `Image.open(path).convert('RGB')`, full resolution, transparency dropped. The encoder asks
    the image decoder for that form through its `input_limits` (alpha "drop", no downscale, no
    padding; see `modalities/image.py`);
  * `image_aspect_ratio = 'pad'` (`modelcompose/mm_utils.py`, `process_images` + `expand2square`,
    with the evaluation loader's `{'vision': {'image_aspect_ratio': 'pad'}}`): the image is centred
    on a square canvas of colour `tuple(int(x * 255) for x in image_processor.image_mean)`, the
    wider side's length, offset `(side - short) // 2`;
  * then the checkpoint's own `CLIPImageProcessor` (`clip_encoder.py`: `CLIPImageProcessor.from_pretrained`):
    shortest side to 336 with PIL's bicubic on the 8-bit image, centre crop 336, /255, CLIP mean/std.
    The original ran transformers 4.31, whose CLIPImageProcessor is the PIL one; transformers 5 names
    that class `CLIPImageProcessorPil` (its `CLIPImageProcessor` is a torchvision-backed class when
    torchvision is installed, which resizes differently), so that is the class used here.
The one departure: a file with an EXIF orientation is decoded upright (the original feeds the
stored pixels); the card notes it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Encoder, EncoderError, check_input, freeze, hub_load_error, reject_state_dict
from .registry import register_encoder

DEFAULT_SOURCE = "openai/clip-vit-large-patch14-336"
SELECT_LAYER = -2  # hidden_states[-2]: the LLaVA feature layer
# OpenAI CLIP normalization (CLIPImageProcessor's defaults for these checkpoints)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The decoded form the original's image path starts from (modalities/image.py ImageLimits).
INPUT_LIMITS = {"alpha": "drop", "max_side": None, "pad_square": False}


def pad_colour(image_mean) -> tuple[int, int, int]:
    """expand2square's background as process_images passes it: `tuple(int(x * 255) for x in image_mean)`."""
    return tuple(int(x * 255) for x in image_mean)


def expand2square(image, background: tuple[int, ...]):
    """A PIL image centred on a square of `background` (the wider side's length): the rule of
    ModelCompose `mm_utils.expand2square` (paste offset `(side - short) // 2`); a square image is returned as is."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def to_pil(image: torch.Tensor):
    """(3, H, W) float in [0, 1] -> 8-bit RGB PIL image. A decoded file's values are k/255, so this is exact."""
    from PIL import Image

    array = (image.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()), mode="RGB")


def image_processor(source: str | None = None, image_size: int = 336):
    """The checkpoint's own CLIP preprocessing (preprocessor_config.json), as the PIL-based processor.

    Without that file (a folder holding only the model, or offline without it cached) the
    processor of the OpenAI CLIP checkpoints at the model's `image_size` is used: shortest side
    and crop at that size, bicubic, the OpenAI mean/std.
    """
    from transformers import CLIPImageProcessorPil

    if source is not None:
        try:
            return CLIPImageProcessorPil.from_pretrained(source)
        except Exception:  # no preprocessor_config.json here: the OpenAI defaults below
            pass
    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3)


def clip_pixels(image: torch.Tensor, processor) -> torch.Tensor:
    """The original's image path from a decoded RGB image: expand2square with the processor's mean colour,
    then the processor -> (3, crop, crop) float32 normalised pixels."""
    square = expand2square(to_pil(image), pad_colour(processor.image_mean))
    return processor(images=square, return_tensors="pt")["pixel_values"][0]


class ClipVisionEncoder(Encoder):
    """Frozen CLIP vision tower: image (3, H, W) in [0, 1] -> (num_patches, hidden_size)."""

    kind = "clip"

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype):
        super().__init__(device, dtype)
        self.model = freeze(model).to(device=device, dtype=dtype)
        cfg = model.config
        self.processor = processor
        crop = (processor.crop_size["height"], processor.crop_size["width"])
        if crop != (cfg.image_size, cfg.image_size):
            raise EncoderError(f"CLIP preprocessing crops to {crop[0]}×{crop[1]} but the model takes "
                               f"{cfg.image_size}×{cfg.image_size}; the folder's preprocessor_config.json does not fit it")
        self.resolution = cfg.image_size
        self.feature_dim = cfg.hidden_size
        self.num_tokens = (cfg.image_size // cfg.patch_size) ** 2

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder-side transform alone: (3, H, W) in [0, 1] -> (3, S, S) normalised, what the tower reads."""
        check_input(x, kind=self.kind, ndim=3, last_dims=(3, None, None), what="an RGB image of shape (3, H, W) in [0, 1]")
        return clip_pixels(x, self.processor)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self.pixels(x)[None].to(device=self.device, dtype=self.dtype)
        hidden = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[SELECT_LAYER]
        return hidden[0, 1:]  # drop CLS


@register_encoder("clip", modality="image", offline=False,
                  description="CLIP vision tower from the hub (LLaVA: layer -2 patch tokens), e.g. 576 x 1024",
                  weight_source=f"Hugging Face hub id or local folder (default {DEFAULT_SOURCE}; ModelCompose's "
                                "run_finetune_vision_*.sh: --mm_vision_encoder model/clip-vit-large-patch14-336)",
                  num_tokens=576, feature_dim=1024, input_limits=INPUT_LIMITS)
def _clip(source, *, device, dtype, state_dict):
    reject_state_dict("clip", state_dict)
    from transformers import CLIPVisionModel

    source = source or DEFAULT_SOURCE
    try:
        model = CLIPVisionModel.from_pretrained(source, dtype=dtype)
    except Exception as exc:  # OSError / connection errors / missing files: all mean "cannot load"
        raise hub_load_error(source, exc, "efficientnet-lite0") from exc
    processor = image_processor(str(Path(source).expanduser()) if Path(source).expanduser().is_dir() else source,
                                model.config.image_size)
    if len(processor.image_mean) != 3 or len(processor.image_std) != 3:
        raise EncoderError(f"{source!r} has a non-RGB image normalization (mean {processor.image_mean}, std {processor.image_std})")
    return ClipVisionEncoder(model, processor, device, dtype)
