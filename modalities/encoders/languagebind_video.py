"""Video encoder `languagebind-video`: LanguageBind_Video_merge, the paper's video encoder.

Sources read (architecture, constants, key names; the code here is our own):
  THUNLP-MT/ModelCompose `modelcompose/model/multimodal_encoder/languagebind/__init__.py`
  (`LanguageBindVideoTower`: `hidden_states[mm_video_select_layer]` with all tokens, CLS kept),
  `.../languagebind/video/modeling_video.py` (`CLIPEncoderLayer` with `add_time_attn`,
  `CLIPVisionTransformer`, `LanguageBindVideo`), `.../languagebind/video/processing_video.py`
  (`get_video_transform`, `load_and_transform_video`), `.../languagebind/video/configuration_video.py`;
  upstream PKU-YuanGroup/LanguageBind (same files under `languagebind/video/`).

Model: a CLIP ViT (ViT-L/14 at 224 for LanguageBind_Video_merge: 24 layers, 1024 wide) run on each
of 8 frames, where every encoder layer first adds a learned per-frame embedding and runs a
*temporal* attention across the 8 frames at each token position (own LayerNorm, residual),
then the usual CLIP layer. transformers' `CLIPVisionModel` has no temporal attention, so we do
not use it whole: the embeddings, attention, MLP and the spatial layer are transformers' own
(`CLIPVisionEmbeddings`, `CLIPAttention`, `CLIPEncoderLayer`), and our layer subclasses
`CLIPEncoderLayer` to add the temporal part. The parameter names are exactly the hub
checkpoint's (`vision_model.encoder.layers.N.temporal_attn.q_proj.weight`, ...).

Features: `hidden_states[-2]` (the output of the second-to-last layer; index 0 is the
embeddings after `pre_layrnorm`), all 257 tokens per frame (CLS first) -> (8, 257, 1024),
returned frame-major as (8 * 257 = 2056, 1024). Only the layers up to the selected one run.

Preprocessing (processing_video.py, decord backend, eval): frame indices
`np.linspace(0, n - 1, 8, dtype=int)` over all `len(VideoReader)` frames, decoded at full
resolution, /255, CLIP mean/std, short side to 224 (bilinear, `align_corners=False`, no
antialias: pytorchvideo's `ShortSideScale`, which floors the long side), centre crop 224
(torchvision's `CenterCropVideo`: offsets rounded). The encoder asks the video decoder for exactly
that decoded form through its `input_limits` (`frame_sampling="linspace"`, `frame_max_side=None`,
`pad_square=False`; see modalities/video.py), so the decoder hands the transform the original's
8 full-resolution frames and the transform does the rest.
The one difference, on purpose: no random horizontal flip. The original applies
`RandomHorizontalFlipVideo(p=0.5)` even at evaluation, so its features are random; ours are
deterministic (as if the flip never fired).
Frames given in another form (the studio's default decoding: segment centres, downscaled to 448,
padded to a square with the ImageNet mean) still work: more than 8 frames are chosen with the
original's linspace (`frame_indices`), and the padding is removed exactly (that colour is not
k/255 for any byte k, so no decoded pixel equals it) before the crop.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder, EncoderError, check_input, freeze, reject_state_dict
from .foreign_weights import (check_state_dict, expected_shapes, hub_file, hub_reference, load_safetensors_file,
                              load_torch_file, tensor_dict)
from .registry import register_encoder

HUB_ID = "LanguageBind/LanguageBind_Video_merge"
SELECT_LAYER = -2
RESOLUTION = 224
# OpenAI CLIP normalisation (processing_video.py OPENAI_DATASET_MEAN / _STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The decoded form the original's video path starts from (modalities/video.py VideoLimits).
INPUT_LIMITS = {"num_frames": 8, "frame_sampling": "linspace", "frame_max_side": None, "pad_square": False}

# The hub config of LanguageBind_Video_merge as we understand it (ViT-L/14 at 224, CLIP text
# tower, 8 frames, temporal attention). Used for the full-size key/shape check and as the
# listing's shape; a real folder's own config.json always wins.
RELEASED_VISION_CONFIG = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "gelu",
                          "layer_norm_eps": 1e-5, "projection_dim": 768, "num_frames": 8, "add_time_attn": True}
RELEASED_TEXT_CONFIG = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "vocab_size": 49408, "max_position_embeddings": 77,
                        "hidden_act": "gelu", "layer_norm_eps": 1e-5, "projection_dim": 768}
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size", "hidden_act", "layer_norm_eps", "num_channels", "projection_dim")
TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
               "max_position_embeddings", "hidden_act", "layer_norm_eps", "projection_dim", "bos_token_id",
               "eos_token_id", "pad_token_id")


def frame_indices(total: int, count: int = 8) -> list[int]:
    """The original's frame choice: `np.linspace(0, total - 1, count, dtype=int)`."""
    if total < 1 or count < 1:
        raise EncoderError(f"cannot choose {count} frames from {total}")
    return [int(i) for i in np.linspace(0, total - 1, count, dtype=int)]


def _vision_config(raw: Mapping):
    from transformers import CLIPVisionConfig

    config = CLIPVisionConfig(**{k: raw[k] for k in VISION_FIELDS if k in raw})
    config._attn_implementation = "sdpa"
    frames = raw.get("num_frames", 1)
    if not raw.get("add_time_attn", False) or isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise EncoderError(f"LanguageBind video config has add_time_attn={raw.get('add_time_attn')!r}, "
                           f"num_frames={frames!r}; the video tower needs temporal attention over >= 2 frames")
    return config, frames


def _text_config(raw: Mapping):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{k: raw[k] for k in TEXT_FIELDS if k in raw})


@functools.lru_cache(maxsize=1)
def temporal_layer_class():
    """`TemporalCLIPLayer`, built on first use so importing this module does not import transformers."""
    from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

    class TemporalCLIPLayer(CLIPEncoderLayer):
        """transformers' CLIP encoder layer, preceded by LanguageBind's per-frame embedding and temporal
        attention (same parameter names as the hub: temporal_embedding, temporal_attn.*, temporal_layer_norm1.*)."""

        def __init__(self, config, frames: int):
            super().__init__(config)
            d = config.hidden_size
            self.temporal_embedding = nn.Parameter(torch.zeros(1, frames, d))
            self.temporal_attn = CLIPAttention(config)
            self.temporal_layer_norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)

        def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:  # type: ignore[override]
            bt, n, d = x.shape
            b = bt // frames
            x = (x.view(b, frames, n, d) + self.temporal_embedding[0, :frames, None, :]).view(bt, n, d)
            across_time = x.view(b, frames, n, d).transpose(1, 2).reshape(b * n, frames, d)
            attended, _ = self.temporal_attn(self.temporal_layer_norm1(across_time), attention_mask=None)
            x = x + attended.view(b, n, frames, d).transpose(1, 2).reshape(bt, n, d)
            return super().forward(x, None)

    return TemporalCLIPLayer


class LanguageBindVisionTower(nn.Module):
    """pixels (B, T, 3, 224, 224) normalised -> hidden_states[SELECT_LAYER] (B, T, tokens, hidden)."""

    def __init__(self, config, frames: int):
        super().__init__()
        from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

        self.config, self.frames = config, frames
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = nn.Module()
        layer = temporal_layer_class()
        self.encoder.layers = nn.ModuleList([layer(config, frames) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # in the file; unused
        self.run_layers = config.num_hidden_layers + 1 + SELECT_LAYER  # hidden_states[-2]: all but the last layer

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, t = pixels.shape[:2]
        if t != self.frames:
            raise EncoderError(f"LanguageBind video tower takes {self.frames} frames, got {t}")
        x = self.pre_layrnorm(self.embeddings(pixels.flatten(0, 1)))
        for layer in self.encoder.layers[: self.run_layers]:
            x = layer(x, t)
        return x.view(b, t, *x.shape[1:])


def _hub_keys(tower: LanguageBindVisionTower) -> dict[str, str]:
    """Hub key -> our module's key: the tower is the hub's `vision_model`."""
    return {"vision_model." + key: key for key in tower.state_dict()}


def released_checkpoint_shapes(vision: Mapping = RELEASED_VISION_CONFIG, text: Mapping = RELEASED_TEXT_CONFIG,
                               projection_dim: int = 768) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the hub checkpoint (vision tower + CLIP text tower + projections), on the meta device."""
    from transformers import CLIPTextModel

    vcfg, frames = _vision_config(vision)
    tcfg = _text_config(text)
    with torch.device("meta"):
        tower = LanguageBindVisionTower(vcfg, frames)
        ours = expected_shapes(tower)
        shapes = {hub: ours[key] for hub, key in _hub_keys(tower).items()}
        # LanguageBindVideo holds the text transformer as `text_model`; transformers 5 names CLIPTextModel's
        # keys without that prefix (embeddings.*, encoder.*, final_layer_norm.*), so it is added here.
        text = expected_shapes(CLIPTextModel(tcfg))
        shapes.update({(k if k.startswith("text_model.") else "text_model." + k): v for k, v in text.items()})
    shapes["visual_projection.weight"] = (projection_dim, vcfg.hidden_size)
    shapes["text_projection.weight"] = (projection_dim, tcfg.hidden_size)
    shapes["logit_scale"] = ()
    return shapes


OPTIONAL_BUFFERS = ("vision_model.embeddings.position_ids", "text_model.embeddings.position_ids")


def build_tower(config_json: Mapping, state: Mapping[str, torch.Tensor], what: str) -> LanguageBindVisionTower:
    """A frozen vision tower from the hub config.json dict and the full checkpoint, strict on every key."""
    for part in ("vision_config", "text_config"):
        if not isinstance(config_json.get(part), Mapping):
            raise EncoderError(f"{what}: config.json lacks '{part}'; is this a LanguageBind video folder ({HUB_ID})?")
    projection = config_json.get("projection_dim", config_json["vision_config"].get("projection_dim", 768))
    shapes = released_checkpoint_shapes(config_json["vision_config"], config_json["text_config"], projection)
    state = dict(state)
    for key in OPTIONAL_BUFFERS:  # older transformers saved these persistent; they are arange(n)
        if key in state:
            buf = state.pop(key)
            if buf.ndim != 2 or not torch.equal(buf[0].long(), torch.arange(buf.shape[-1])):
                raise EncoderError(f"{what}: {key} is not arange(n); the file is damaged")
    check_state_dict(state, shapes, what)
    vcfg, frames = _vision_config(config_json["vision_config"])
    tower = LanguageBindVisionTower(vcfg, frames)
    ours = {key: state[hub] for hub, key in _hub_keys(tower).items()}
    missing, unexpected = tower.load_state_dict(ours, strict=False)
    if missing or unexpected:  # cannot happen after check_state_dict; a guard against mapping bugs
        raise RuntimeError(f"LanguageBind mapping left missing={missing[:3]} unexpected={unexpected[:3]}")
    return freeze(tower)


def fetch_hub_folder(repo: str) -> Path:
    """The hub repository's config.json and weights (safetensors, else the .bin) through the hub cache; their folder."""
    what = f"LanguageBind video weights {repo!r}"
    config = hub_file(repo, "config.json", what)
    problem = None
    for name in WEIGHT_FILES:
        try:
            hub_file(repo, name, what)
            return config.parent
        except EncoderError as exc:
            problem = exc
    raise problem


def load_hub_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, state_dict) of a LanguageBind video folder in the hub layout (a local folder, or a
    hub id such as LanguageBind/LanguageBind_Video_merge fetched through the hub cache)."""
    reference = hub_reference(str(folder))
    if reference is not None and reference[1] is None:
        folder = fetch_hub_folder(reference[0])
    folder = Path(folder).expanduser()
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise EncoderError(f"{str(folder)!r} is not a LanguageBind video folder (no config.json); download "
                           f"{HUB_ID} (e.g. huggingface-cli download {HUB_ID} --local-dir DIR) and pass DIR")
    try:
        config_json = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncoderError(f"{config_path} is not valid JSON ({exc}); download the folder again") from None
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            what = f"LanguageBind video {name}"
            raw = load_safetensors_file(path, what) if name.endswith(".safetensors") else load_torch_file(path, what)
            return config_json, tensor_dict(raw, what)
    raise EncoderError(f"{str(folder)!r} has no weights ({' or '.join(WEIGHT_FILES)}); download {HUB_ID} again")


def strip_square_padding(frames: torch.Tensor) -> torch.Tensor:
    """Undo modalities/video.py's padding to a square: drop border rows/columns that are exactly the pad colour
    in every frame and channel. Frames without such borders are returned unchanged."""
    from ..image import IMAGENET_MEAN

    colour = torch.tensor(IMAGENET_MEAN, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    is_pad = (frames == colour).all(dim=1).all(dim=0)  # (H, W)
    rows = torch.nonzero(~is_pad.all(dim=1)).flatten()
    cols = torch.nonzero(~is_pad.all(dim=0)).flatten()
    if rows.numel() == 0 or cols.numel() == 0:  # an all-padding frame: keep it as it is
        return frames
    return frames[..., int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]


def video_input(frames: torch.Tensor, count: int, resolution: int = RESOLUTION) -> torch.Tensor:
    """The encoder-side transform: (F, 3, H, W) in [0, 1] -> (count, 3, 224, 224) CLIP-normalised float32
    (`resolution` is the tower's image size, 224 for the released weights)."""
    x = frames.detach().to(torch.float32)
    if x.shape[0] != count:
        x = x[frame_indices(x.shape[0], count)]
    x = strip_square_padding(x)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = (x.clamp(0, 1) - mean) / std  # the original normalises before resizing
    h, w = x.shape[-2:]
    if w < h:
        size = (int(math.floor(h / w * resolution)), resolution)
    else:
        size = (resolution, int(math.floor(w / h * resolution)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = int(round((size[0] - resolution) / 2.0)), int(round((size[1] - resolution) / 2.0))
    return x[..., top:top + resolution, left:left + resolution]


class LanguageBindVideoEncoder(Encoder):
    """Frozen LanguageBind video tower: frames (F, 3, H, W) in [0, 1] -> (8 x 257, 1024), frame-major."""

    kind = "languagebind-video"

    def __init__(self, tower: LanguageBindVisionTower, device: torch.device, dtype: torch.dtype, source: str = ""):
        super().__init__(device, dtype)
        self.tower = freeze(tower).to(device=device, dtype=dtype)
        self.source = source
        cfg = tower.config
        self.frames = tower.frames
        self.resolution = cfg.image_size
        self.tokens_per_frame = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.num_tokens = self.frames * self.tokens_per_frame
        self.feature_dim = cfg.hidden_size

    def _check(self, x: torch.Tensor) -> None:
        check_input(x, kind=self.kind, ndim=4, last_dims=(3, None, None), what="video frames of shape (F, 3, H, W) in [0, 1]")

    @torch.no_grad()
    def encode_batch(self, videos: list[torch.Tensor]) -> torch.Tensor:
        """(B, 8 * 257, 1024) float32 for several videos in one pass."""
        for v in videos:
            self._check(v)
        pixels = torch.stack([video_input(v.to(self.device), self.frames, self.resolution) for v in videos])
        pixels = pixels.to(self.dtype)
        hidden = self.tower(pixels)  # (B, T, 257, D)
        return hidden.flatten(1, 2).float()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_batch([x])[0]


def _released_tokens() -> int:
    per_frame = (RELEASED_VISION_CONFIG["image_size"] // RELEASED_VISION_CONFIG["patch_size"]) ** 2 + 1
    return RELEASED_VISION_CONFIG["num_frames"] * per_frame


@register_encoder("languagebind-video", modality="video", offline=False,
                  description="LanguageBind_Video_merge (the paper's video encoder): 8 frames, layer -2 with CLS -> "
                              "8 x 257 tokens x 1024",
                  weight_source=f"the hub repository {HUB_ID} (config.json + model.safetensors or pytorch_model.bin), "
                                "its id or a local copy of the folder (--weights / source); ModelCompose's "
                                "run_finetune_video_*.sh: --mm_video_encoder model/LanguageBind_Video_merge",
                  num_tokens=_released_tokens(), feature_dim=RELEASED_VISION_CONFIG["hidden_size"],
                  input_limits=INPUT_LIMITS)
def _languagebind_video(source, *, device, dtype, state_dict):
    reject_state_dict("languagebind-video", state_dict)
    if source is None:
        raise EncoderError(f"encoder 'languagebind-video' needs its weights: pass the hub id {HUB_ID} or a local "
                           "copy of that folder (--weights, or encoder source in expert.json)")
    config_json, state = load_hub_folder(source)
    tower = build_tower(config_json, state, f"LanguageBind video folder {Path(source).name!r}")
    return LanguageBindVideoEncoder(tower, device, dtype, str(source))
