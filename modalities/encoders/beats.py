"""Audio encoder `beats`: BEATs (iter3+, AS2M), the audio encoder of the paper's audio expert.

Sources read (architecture, constants, key names; the code here is our own):
  microsoft/unilm `beats/BEATs.py`, `beats/backbone.py` (upstream);
  THUNLP-MT/ModelCompose `modelcompose/model/multimodal_encoder/beats/BEATs.py` (`extract_features_new`),
  `.../beats/backbone.py`, `.../beats/audio_processor.py` (`BeatsAudioProcessor.__call__`),
  `.../audio_encoder.py` (`BeatsAudioEncoder`: the file unpickles to `{"cfg": dict, "model": state_dict}`).

Pipeline (what ModelCompose's audio expert saw):
  16 kHz mono waveform in [-1, 1] (modalities/audio.py already gives this)
  -> x 2**15 -> 128-bin Kaldi fbank, 25 ms / 10 ms (kaldi_fbank.py; torchaudio cannot be installed here)
  -> (fbank - 15.41663) / (2 * 6.55582)
  -> zero-padded (after normalisation, as the original) or cut to 1024 frames = 10.24 s
  -> 16x16 patch conv (512 ch) -> LayerNorm -> Linear 512->768
  -> x + GELU(weight-normed grouped conv over time) -> LayerNorm
  -> 12 post-norm ("deep norm") transformer layers with a shared T5-style bucketed relative
     position bias, gated per query ("gru_rel_pos")
  -> 512 tokens (64 time x 8 frequency patches, time-major) of 768.
ModelCompose passes a padding mask that is all False (its processor marks the zero frames as
valid), so every token attends to every token; we do the same and take no mask.

Attention: BEATs scales q by 1/32 and multiplies the max-shifted logits by 32 again (an fp16
overflow guard); softmax is shift-invariant, so that equals plain scaled dot-product
attention with an additive bias, which is what `F.scaled_dot_product_attention` computes here.
The classification head of fine-tuned checkpoints (`predictor.*`) is loaded and checked but not
used: the features are the encoder output, as in ModelCompose (`feature_only=True`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder, EncoderError, check_input, freeze, reject_state_dict
from .foreign_weights import check_state_dict, expected_shapes, hub_file, hub_reference, load_torch_file, tensor_dict
from .kaldi_fbank import kaldi_fbank
from .registry import register_encoder

SAMPLE_RATE = 16_000
WAVE_SCALE = 2 ** 15
FBANK_BINS = 128
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
TARGET_FRAMES = 1024  # 10.24 s of 10 ms frames; BeatsAudioProcessor(n_frames=2, frame_length=512)
RELEASED_FILE = "BEATs_iter3_plus_AS2M.pt"


@dataclass(frozen=True)
class BeatsConfig:
    """The architecture fields of a BEATs checkpoint's `cfg` (defaults: BEATs_iter3_plus_AS2M)."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    finetuned_model: bool = False
    predictor_class: int = 527

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EncoderError(f"BEATs cfg {f.name}={value!r}; expected a positive integer")
            if f.type == "bool" and not isinstance(value, bool):
                raise EncoderError(f"BEATs cfg {f.name}={value!r}; expected true or false")
        if self.activation_fn != "gelu":
            raise EncoderError(f"BEATs cfg activation_fn={self.activation_fn!r}; only 'gelu' (every released "
                               "BEATs checkpoint) is supported")
        if self.encoder_embed_dim % self.encoder_attention_heads or self.encoder_embed_dim % self.conv_pos_groups:
            raise EncoderError(f"BEATs cfg encoder_embed_dim={self.encoder_embed_dim} must be divisible by "
                               f"encoder_attention_heads ({self.encoder_attention_heads}) and conv_pos_groups "
                               f"({self.conv_pos_groups})")
        if self.layer_norm_first and self.deep_norm:
            raise EncoderError("BEATs cfg sets both layer_norm_first and deep_norm; the original refuses that too")
        if FBANK_BINS % self.input_patch_size or TARGET_FRAMES % self.input_patch_size:
            raise EncoderError(f"BEATs cfg input_patch_size={self.input_patch_size} must divide {FBANK_BINS} and "
                               f"{TARGET_FRAMES}")

    @classmethod
    def from_cfg(cls, cfg: object) -> "BeatsConfig":
        """From the checkpoint's `cfg` dict: architecture fields read (defaults as upstream's BEATsConfig
        for absent ones), training-only fields (dropouts, layerdrop, gradient decay) ignored."""
        if not isinstance(cfg, Mapping):
            raise EncoderError(f"BEATs checkpoint 'cfg' must be a dict, got {type(cfg).__name__}")
        upstream_defaults = {"deep_norm": False, "relative_position_embedding": False, "gru_rel_pos": False,
                             "input_patch_size": -1, "max_distance": 1280}
        values = {}
        for f in fields(cls):
            values[f.name] = cfg.get(f.name, upstream_defaults.get(f.name, f.default))
        return cls(**values)

    @property
    def num_tokens(self) -> int:
        return (TARGET_FRAMES // self.input_patch_size) * (FBANK_BINS // self.input_patch_size)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """(length, length) bucket ids of key - query offsets: T5's bidirectional log buckets, as BEATs."""
    position = torch.arange(length)
    relative = position[None, :] - position[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    far = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    far = far.clamp(max=half - 1)
    return buckets + torch.where(distance < exact, distance, far)


class WeightNormConv1d(nn.Module):
    """Conv1d with weight = v * g / ||v|| (norm over every dim but `dim`), stored as weight_g / weight_v
    like `nn.utils.weight_norm` writes them in the released checkpoints."""

    def __init__(self, channels: int, kernel: int, groups: int, dim: int = 2):
        super().__init__()
        self.dim, self.groups, self.padding = dim, groups, kernel // 2
        shape_v = (channels, channels // groups, kernel)
        shape_g = tuple(s if i == dim else 1 for i, s in enumerate(shape_v))
        self.weight_g = nn.Parameter(torch.ones(shape_g))
        self.weight_v = nn.Parameter(torch.randn(shape_v) * 0.02)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = tuple(i for i in range(self.weight_v.ndim) if i != self.dim)
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=other, keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class BeatsAttention(nn.Module):
    def __init__(self, cfg: BeatsConfig, owns_bias: bool):
        super().__init__()
        d, self.heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        if owns_bias:  # only layer 0 holds the table; the others share it (see BeatsTransformer)
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, self.heads)
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(d // self.heads, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.heads, 1, 1))
        self.gated = cfg.gru_rel_pos

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        bias = None
        if position_bias is not None:  # (H, T, T)
            bias = position_bias[None]
            if self.gated:  # per-query gate from the unscaled query of each head
                gates = torch.sigmoid(self.grep_linear(q).view(b, self.heads, t, 2, 4).sum(-1))
                gate_a, gate_b = gates[..., :1], gates[..., 1:]
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class BeatsLayer(nn.Module):
    def __init__(self, cfg: BeatsConfig, owns_bias: bool):
        super().__init__()
        d = cfg.encoder_embed_dim
        self.self_attn = BeatsAttention(cfg, owns_bias)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.pre_norm = cfg.layer_norm_first
        self.alpha = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0  # deep-norm residual scale

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.self_attn(self.self_attn_layer_norm(x), position_bias)
            return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, position_bias))
        return self.final_layer_norm(x * self.alpha + self.fc2(F.gelu(self.fc1(x))))


class BeatsTransformer(nn.Module):
    def __init__(self, cfg: BeatsConfig):
        super().__init__()
        self.cfg = cfg
        self.pos_conv = nn.ModuleList([WeightNormConv1d(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups)])
        self.layers = nn.ModuleList([BeatsLayer(cfg, owns_bias=cfg.relative_position_embedding and i == 0)
                                     for i in range(cfg.encoder_layers)])
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.pos_conv[0](x.transpose(1, 2))
        if self.cfg.conv_pos % 2 == 0:  # SamePad: an even kernel gives one extra step
            conv = conv[..., :-1]
        x = x + F.gelu(conv).transpose(1, 2)
        if not self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        bias = None
        if self.cfg.relative_position_embedding:
            buckets = relative_position_buckets(x.shape[1], self.cfg.num_buckets, self.cfg.max_distance)
            table = self.layers[0].self_attn.relative_attention_bias
            bias = table(buckets.to(table.weight.device)).permute(2, 0, 1).float()  # (H, T, T)
        for layer in self.layers:
            x = layer(x, bias)
        return self.layer_norm(x) if self.cfg.layer_norm_first else x


class BeatsModel(nn.Module):
    """fbank (B, frames, 128) normalised -> (B, tokens, 768); keys as the released checkpoints."""

    def __init__(self, cfg: BeatsConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        if cfg.embed_dim != cfg.encoder_embed_dim:
            self.post_extract_proj = nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
        self.encoder = BeatsTransformer(cfg)
        if cfg.finetuned_model:  # AudioSet classifier of fine-tuned checkpoints: kept, never used
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(fbank[:, None])  # (B, C, T/p, F/p)
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # time-major patches
        if hasattr(self, "post_extract_proj"):
            x = self.post_extract_proj(x)
        return self.encoder(x)


def shared_bias_copies(cfg: BeatsConfig) -> list[str]:
    """Keys upstream's state_dict() also writes for layers 1.. (they share layer 0's table)."""
    if not cfg.relative_position_embedding:
        return []
    return [f"encoder.layers.{i}.self_attn.relative_attention_bias.weight" for i in range(1, cfg.encoder_layers)]


def released_checkpoint_shapes(cfg: BeatsConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released checkpoint's 'model' for `cfg`, built on the meta device (no memory)."""
    with torch.device("meta"):
        shapes = expected_shapes(BeatsModel(cfg))
    first = "encoder.layers.0.self_attn.relative_attention_bias.weight"
    shapes.update({key: shapes[first] for key in shared_bias_copies(cfg)})
    return shapes


def build_beats(checkpoint: object, what: str = "BEATs checkpoint") -> BeatsModel:
    """A frozen BeatsModel from a loaded `{"cfg": dict, "model": state_dict}`, strict on keys and shapes."""
    if not isinstance(checkpoint, Mapping) or set(checkpoint) - {"cfg", "model"} or not {"cfg", "model"} <= set(checkpoint):
        keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise EncoderError(f"{what}: expected a dict with exactly 'cfg' and 'model' (the released BEATs layout), "
                           f"got {keys}")
    cfg = BeatsConfig.from_cfg(checkpoint["cfg"])
    state = tensor_dict(checkpoint["model"], f"{what} 'model'")
    shapes = released_checkpoint_shapes(cfg)
    copies = shared_bias_copies(cfg)
    if not any(key in state for key in copies):  # also accept a file saved without the shared copies
        for key in copies:
            shapes.pop(key)
    check_state_dict(state, shapes, what)
    first = state.get("encoder.layers.0.self_attn.relative_attention_bias.weight")
    for key in shared_bias_copies(cfg):
        if key in state:
            if not torch.equal(state.pop(key), first):
                raise EncoderError(f"{what}: {key} differs from layer 0's table, but BEATs shares one table "
                                   "across layers; the file is damaged")
    model = BeatsModel(cfg)
    model.load_state_dict(state, strict=True)
    return freeze(model)


def beats_input(waveform: torch.Tensor) -> torch.Tensor:
    """The encoder-side transform: 16 kHz waveform (N,) in [-1, 1] -> normalised fbank (1024, 128) float32.

    Clips shorter than one 25 ms window give no fbank frames and so 1024 zero (padding) frames,
    as the original's zero padding would; longer than 10.24 s are cut, as the original.
    """
    wave = waveform.detach().to("cpu", torch.float64) * WAVE_SCALE
    if wave.shape[0] >= 400:
        fbank = (kaldi_fbank(wave, sample_rate=SAMPLE_RATE, num_mel_bins=FBANK_BINS) - FBANK_MEAN) / (2 * FBANK_STD)
    else:
        fbank = torch.zeros(0, FBANK_BINS)
    fbank = fbank[:TARGET_FRAMES]
    return F.pad(fbank, (0, 0, 0, TARGET_FRAMES - fbank.shape[0]))


class BeatsEncoder(Encoder):
    """Frozen BEATs: waveform (N,) 16 kHz in [-1, 1] -> (512, 768)."""

    kind = "beats"

    def __init__(self, model: BeatsModel, device: torch.device, dtype: torch.dtype, source: str = ""):
        super().__init__(device, dtype)
        self.model = freeze(model).to(device=device, dtype=dtype)
        self.source = source
        self.num_tokens = model.cfg.num_tokens
        self.feature_dim = model.cfg.encoder_embed_dim

    def _check(self, x: torch.Tensor) -> None:
        check_input(x, kind=self.kind, ndim=1, last_dims=(None,), what="a 16 kHz mono waveform of shape (N,)")

    @torch.no_grad()
    def encode_batch(self, waveforms: list[torch.Tensor]) -> torch.Tensor:
        """(B, 512, 768) float32 for several clips in one pass (each clip padded/cut to 10.24 s alone)."""
        for w in waveforms:
            self._check(w)
        fbank = torch.stack([beats_input(w) for w in waveforms]).to(device=self.device, dtype=self.dtype)
        return self.model(fbank).float()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_batch([x])[0]


@register_encoder("beats", modality="audio", offline=False,
                  description="BEATs iter3+ AS2M (the paper's audio encoder): 128-bin Kaldi fbank, 1024 frames -> "
                              "512 tokens x 768",
                  weight_source=f"{RELEASED_FILE} from microsoft/unilm beats/README.md (not on the hub: a local .pt, "
                                "or owner/name:file.pt for a hub copy; --weights / source); ModelCompose's "
                                "run_finetune_audio_*.sh: --mm_audio_encoder model/beats/BEATs_iter3_plus_AS2M.pt",
                  num_tokens=BeatsConfig().num_tokens, feature_dim=BeatsConfig().encoder_embed_dim,
                  input_limits={"sample_rate": SAMPLE_RATE})
def _beats(source, *, device, dtype, state_dict):
    reject_state_dict("beats", state_dict)
    if source is None:
        raise EncoderError(f"encoder 'beats' needs its weights file: download {RELEASED_FILE} (microsoft/unilm, "
                           "beats) and pass its path (--weights PATH, or encoder source in expert.json)")
    reference = hub_reference(source)
    if reference is not None and reference[1] is not None:
        path = hub_file(reference[0], reference[1], "BEATs weights")
    else:
        path = Path(source).expanduser()
    model = build_beats(load_torch_file(path, "BEATs"), f"BEATs checkpoint {path.name!r}")
    return BeatsEncoder(model, device, dtype, str(path))
