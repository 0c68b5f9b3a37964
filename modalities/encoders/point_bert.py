"""Point-cloud encoder `point-bert`: PointLLM's Point-BERT (`point_bert_v1.2.pt`), the paper's point encoder.

Sources read (architecture, constants, key names; the code here is our own):
  THUNLP-MT/ModelCompose `modelcompose/model/multimodal_encoder/point_encoder.py` (`PointEncoder`:
  config `PointTransformer_8192point_2layer.yaml`, `point_dims = 6`, `load_state_dict` of the unpickled file: a plain state_dict),
  `.../pointbert/point_encoder.py` (`PointTransformer`, `Block`, `Attention`), `.../pointbert/dvae.py`
  (`Group`, `Encoder`), `.../pointbert/misc.py` (`fps`); upstream OpenRobotLab/PointLLM
  `pointllm/model/pointbert/` (same modules; its `load_checkpoint` reads `ckpt["state_dict"]` with
  the prefix `module.point_encoder.`).

Config (the yaml): trans_dim 384, depth 12, num_heads 6, group_size 32, num_group 512,
encoder_dims 256, use_max_pool false, npoints 8192; ModelCompose sets point_dims 6 (xyz + rgb).
The weights source is the .pt file (this config), or a folder holding the .pt and a
PointTransformer_*.yaml in ModelCompose's format (e.g. v1.1's PointTransformer_base_8192point.yaml).

cloud (8192, 6) -> 512 centres by farthest-point sampling of xyz -> the 32 nearest points of each
-> (xyz - centre, rgb) -> mini-PointNet (conv1x1 6->128, BN, ReLU, ->256; max; concat 512 ->
512, BN, ReLU, ->256; max) -> Linear 256->384 -> [CLS] + 512 group tokens, positions from an
MLP of the centres (CLS has its own) added before EVERY block -> 12 pre-norm blocks -> LayerNorm
-> 513 tokens of 384 (use_max_pool false: no pooling).

Differences from the original, on purpose:
  * FPS starts at point 0 (deterministic). ModelCompose's `misc.fps` starts at a random point
    (`torch.randint`), so its features vary from call to call; PointLLM's CUDA kernel
    (pointnet2 `furthest_point_sample`) starts at point 0, as here.
  * Normalisation: ModelCompose defines `pc_norm` (centre at the centroid, scale the farthest
    point to 1) but never calls it, feeding its .npy clouds as stored; PointLLM, whose training
    produced these weights, applies pc_norm to every 8192-point cloud in its dataset. We apply
    pc_norm to the final 8192 points (after the point-count step below), as PointLLM does. The
    project's decoder already normalises the whole decoded cloud before choosing points, so this
    only corrects the small shift of the chosen subset (e.g. a max radius of 0.997 -> 1); for a
    cloud that is already normalised it changes nothing, which is the only case where
    ModelCompose's skipping it and PointLLM's applying it agree.
  * Point count: the encoder-side transform makes the cloud exactly 8192 points. Fewer points are
    repeated in order (index i % N): the 32 neighbours of a centre then cover about the same
    surface as in an 8192-point training cloud, and duplicates do not change the max-pooled
    group features. More points are thinned by farthest-point sampling. Decoding with
    `input_limits` (num_points=8192, what the composer and `python -m composition encode` do) needs
    neither; with `keep_exact` a file of exactly 8192 points (the original's `.npy` clouds) keeps its
    stored order, so the first point, where FPS starts, is the original's first point too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder, EncoderError, check_input, freeze, reject_state_dict
from .foreign_weights import check_state_dict, expected_shapes, hub_file, hub_reference, load_torch_file, tensor_dict
from .point import _gather, farthest_point_sample, knn_indices
from .registry import register_encoder

RELEASED_FILE = "point_bert_v1.2.pt"
# Where PointLLM publishes it: the hub repository of its initial weights (OpenRobotLab/PointLLM README,
# "Download the Initial LLM and Point Encoder Weights"; scripts/train_stage1.sh:
# point_backbone_ckpt=$model_name_or_path/point_bert_v1.2.pt with model_name_or_path=checkpoints/PointLLM_7B_v1.1_init).
HUB_SOURCE = f"RunsenXu/PointLLM_7B_v1.1_init:{RELEASED_FILE}"
WRAPPED_PREFIX = "module.point_encoder."  # PointLLM's load_checkpoint layout


@dataclass(frozen=True)
class PointBertConfig:
    """PointTransformer_8192point_2layer.yaml (+ point_dims 6 as ModelCompose sets it)."""

    trans_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    group_size: int = 32
    num_group: int = 512
    encoder_dims: int = 256
    point_dims: int = 6
    npoints: int = 8192

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EncoderError(f"PointBertConfig.{name}={value!r}; expected a positive integer")
        if self.trans_dim % self.num_heads:
            raise EncoderError(f"PointBertConfig.trans_dim ({self.trans_dim}) must be divisible by num_heads "
                               f"({self.num_heads})")
        if self.point_dims != 6:
            raise EncoderError(f"PointBertConfig.point_dims={self.point_dims}; the paper's encoder takes xyz + rgb (6)")

    @property
    def num_tokens(self) -> int:
        return self.num_group + 1


def group_points(points: torch.Tensor, num_group: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """points (B, N, 6) -> (neighbourhoods (B, G, k, 6): xyz relative to the centre + rgb, centres (B, G, 3))."""
    xyz = points[..., :3]
    centres = _gather(xyz, farthest_point_sample(xyz.float(), num_group))
    idx = knn_indices(xyz.float(), centres.float(), group_size)
    neighbours = _gather(points, idx)
    return torch.cat([neighbours[..., :3] - centres[:, :, None], neighbours[..., 3:]], dim=-1), centres


class MiniPointNet(nn.Module):
    """dvae.Encoder: keys first_conv.{0,1,3}, second_conv.{0,1,3} (BatchNorm at index 1)."""

    def __init__(self, out_dim: int, in_dim: int):
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv1d(in_dim, 128, 1), nn.BatchNorm1d(128), nn.ReLU(), nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(),
                                         nn.Conv1d(512, out_dim, 1))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        b, g, n, c = groups.shape
        x = self.first_conv(groups.reshape(b * g, n, c).transpose(1, 2))  # (BG, 256, n)
        x = torch.cat([x.max(dim=2, keepdim=True).values.expand(-1, -1, n), x], dim=1)
        return self.second_conv(x).max(dim=2).values.reshape(b, g, -1)


class PointBertAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class PointBertMlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PointBertBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = PointBertAttention(dim, heads)
        self.mlp = PointBertMlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PointBertBlocks(nn.Module):
    """The positions are added before every block (PointTransformer's TransformerEncoder)."""

    def __init__(self, cfg: PointBertConfig):
        super().__init__()
        self.blocks = nn.ModuleList([PointBertBlock(cfg.trans_dim, cfg.num_heads) for _ in range(cfg.depth)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return x


class PointBertModel(nn.Module):
    """points (B, N, 6) -> (B, num_group + 1, trans_dim); state_dict keys as point_bert_v1.2.pt."""

    def __init__(self, cfg: PointBertConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.trans_dim
        self.encoder = MiniPointNet(cfg.encoder_dims, cfg.point_dims)
        self.reduce_dim = nn.Linear(cfg.encoder_dims, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, d))
        self.blocks = PointBertBlocks(cfg)
        self.norm = nn.LayerNorm(d)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        groups, centres = group_points(points, self.cfg.num_group, self.cfg.group_size)
        tokens = self.reduce_dim(self.encoder(groups))
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centres)], dim=1)
        return self.norm(self.blocks(x, pos))


def released_checkpoint_shapes(cfg: PointBertConfig = PointBertConfig()) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return expected_shapes(PointBertModel(cfg))


def unwrap_checkpoint(obj: object, what: str) -> dict[str, torch.Tensor]:
    """A plain state_dict (ModelCompose's file), or PointLLM's `{"state_dict": {"module.point_encoder.<key>": ...}}`
    whose other `module.*` entries are the pre-training heads PointLLM's loader skips too."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        inner = tensor_dict(obj["state_dict"], f"{what} 'state_dict'")
        foreign = sorted(k for k in inner if not k.startswith("module."))
        if foreign:
            raise EncoderError(f"{what}: unexpected keys outside 'module.' in 'state_dict' (e.g. {foreign[:4]})")
        return {k[len(WRAPPED_PREFIX):]: v for k, v in inner.items() if k.startswith(WRAPPED_PREFIX)}
    return tensor_dict(obj, what)


def build_point_bert(obj: object, what: str = "Point-BERT checkpoint", cfg: PointBertConfig = PointBertConfig()) -> PointBertModel:
    state = unwrap_checkpoint(obj, what)
    check_state_dict(state, released_checkpoint_shapes(cfg), what)
    model = PointBertModel(cfg)
    model.load_state_dict(state, strict=True)
    return freeze(model)


def pc_norm(cloud: torch.Tensor) -> torch.Tensor:
    """PointLLM's pc_norm: xyz centred at the centroid and scaled so the farthest point is at 1; rgb kept."""
    xyz = cloud[:, :3] - cloud[:, :3].mean(dim=0)
    radius = xyz.norm(dim=1).max()
    if not bool(radius > 0):  # all points at one place (the decoder refuses such files): nothing to scale
        return torch.cat([xyz, cloud[:, 3:]], dim=1)
    return torch.cat([xyz / radius, cloud[:, 3:]], dim=1)


def point_bert_input(cloud: torch.Tensor, npoints: int) -> torch.Tensor:
    """The encoder-side transform: (N, 6) -> exactly (npoints, 6), pc_norm applied, deterministic
    (see module docstring)."""
    n = cloud.shape[0]
    if n < npoints:
        cloud = cloud[torch.arange(npoints, device=cloud.device) % n]
    elif n > npoints:
        cloud = cloud[farthest_point_sample(cloud[None, :, :3].float(), npoints)[0]]
    return pc_norm(cloud)


class PointBertEncoder(Encoder):
    """Frozen Point-BERT: cloud (N, 6) xyz (unit sphere) + rgb in [0, 1] -> (513, 384)."""

    kind = "point-bert"

    def __init__(self, model: PointBertModel, device: torch.device, dtype: torch.dtype, source: str = ""):
        super().__init__(device, dtype)
        self.model = freeze(model).to(device=device, dtype=dtype)
        self.cfg = model.cfg
        self.source = source
        self.num_tokens = model.cfg.num_tokens
        self.feature_dim = model.cfg.trans_dim

    def _check(self, x: torch.Tensor) -> None:
        check_input(x, kind=self.kind, ndim=2, last_dims=(None, 6),
                    what="a point cloud of shape (N, 6): xyz (centred, unit sphere) + rgb in [0, 1]")

    @torch.no_grad()
    def encode_batch(self, clouds: list[torch.Tensor]) -> torch.Tensor:
        for c in clouds:
            self._check(c)
        batch = torch.stack([point_bert_input(c.to(self.device, torch.float32), self.cfg.npoints) for c in clouds])
        return self.model(batch.to(self.dtype)).float()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_batch([x])[0]


CONFIG_FIELDS = ("trans_dim", "depth", "num_heads", "group_size", "num_group", "encoder_dims")


def config_from_yaml(path: Path) -> PointBertConfig:
    """A PointTransformer yaml as ModelCompose ships them (`model: {...}`, `npoints`); point_dims is 6
    whatever the yaml says (ModelCompose overrides it), training/projection fields are ignored."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EncoderError(f"Point-BERT config {path.name!r} is not readable YAML ({type(exc).__name__}); "
                           "use PointTransformer_8192point_2layer.yaml from ModelCompose") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or not all(k in model for k in CONFIG_FIELDS):
        raise EncoderError(f"Point-BERT config {path.name!r} needs model: {{{', '.join(CONFIG_FIELDS)}}}")
    if model.get("use_max_pool", False):
        raise EncoderError(f"Point-BERT config {path.name!r} sets use_max_pool: the paper's encoder keeps all "
                           f"{model['num_group'] + 1} tokens (use_max_pool: false)")
    return PointBertConfig(**{k: model[k] for k in CONFIG_FIELDS}, npoints=raw.get("npoints", 8192))


def resolve_source(source: str) -> tuple[Path, PointBertConfig]:
    """A .pt file (the released 8192-point config), a folder with one .pt and one PointTransformer*.yaml, or a
    file in a hub repository, ``owner/name:file.pt`` (e.g. ``RunsenXu/PointLLM_7B_v1.1_init:point_bert_v1.2.pt``),
    fetched through the hub cache."""
    reference = hub_reference(source)
    if reference is not None and reference[1] is not None:
        return hub_file(reference[0], reference[1], "Point-BERT weights"), PointBertConfig()
    path = Path(source).expanduser()
    if not path.is_dir():
        return path, PointBertConfig()
    weights, configs = sorted(path.glob("*.pt")), sorted(path.glob("*.yaml"))
    if len(weights) != 1 or len(configs) > 1:
        raise EncoderError(f"Point-BERT folder {str(path)!r} must hold one .pt file and at most one .yaml config, "
                           f"found {len(weights)} .pt and {len(configs)} .yaml; pass the .pt file itself")
    return weights[0], config_from_yaml(configs[0]) if configs else PointBertConfig()


@register_encoder("point-bert", modality="point", offline=False,
                  description="Point-BERT of PointLLM v1.2 (the paper's point encoder): 8192 points xyz+rgb -> "
                              "513 tokens x 384",
                  weight_source=f"{RELEASED_FILE} of OpenRobotLab/PointLLM, on the hub as {HUB_SOURCE} (that "
                                "reference, a local .pt, or a folder with the .pt and its PointTransformer_*.yaml; "
                                "--weights / source); ModelCompose's run_finetune_point_*.sh: --mm_point_encoder "
                                "model/PointLLM/point_bert_v1.2.pt",
                  num_tokens=PointBertConfig().num_tokens, feature_dim=PointBertConfig().trans_dim,
                  input_limits={"num_points": PointBertConfig().npoints, "keep_exact": True})
def _point_bert(source, *, device, dtype, state_dict):
    reject_state_dict("point-bert", state_dict)
    if source is None:
        raise EncoderError(f"encoder 'point-bert' needs its weights file: pass {HUB_SOURCE} (the hub) or the path "
                           f"of a local {RELEASED_FILE} (--weights PATH, or encoder source in expert.json)")
    path, cfg = resolve_source(source)
    model = build_point_bert(load_torch_file(path, "Point-BERT"), f"Point-BERT checkpoint {path.name!r}", cfg)
    return PointBertEncoder(model, device, dtype, str(source))
