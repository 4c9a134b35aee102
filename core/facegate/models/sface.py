"""SFace (MobileFaceNet-style, 128-d) as a torch module.

The published network is a plain chain: 27 x (Conv, BatchNorm, PReLU) alternating depthwise
3x3 and pointwise 1x1 convolutions, then BatchNorm, Linear(7*7*1024 -> 128), BatchNorm.
Input is ``(N, 3, 112, 112)`` float32 RGB in 0..255; the network's own first step is
``(x - 127.5) / 128``. Parameter names follow the ONNX graph (``conv_2_dw`` ...), so the
converter and this module agree by name, and fine-tuning sees ordinary BatchNorm layers;
``fuse()`` folds every BatchNorm into the neighbouring Conv/Linear for inference.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

#: (name, out_channels, kernel, stride, depthwise) in graph order; in_channels follow.
SFACE_LAYERS: tuple[tuple[str, int, int, int, bool], ...] = (
    ("conv_1", 32, 3, 1, False),
    ("conv_2_dw", 32, 3, 1, True),
    ("conv_2", 64, 1, 1, False),
    ("conv_3_dw", 64, 3, 2, True),
    ("conv_3", 128, 1, 1, False),
    ("conv_4_dw", 128, 3, 1, True),
    ("conv_4", 128, 1, 1, False),
    ("conv_5_dw", 128, 3, 2, True),
    ("conv_5", 256, 1, 1, False),
    ("conv_6_dw", 256, 3, 1, True),
    ("conv_6", 256, 1, 1, False),
    ("conv_7_dw", 256, 3, 2, True),
    ("conv_7", 512, 1, 1, False),
    ("conv_8_dw", 512, 3, 1, True),
    ("conv_8", 512, 1, 1, False),
    ("conv_9_dw", 512, 3, 1, True),
    ("conv_9", 512, 1, 1, False),
    ("conv_10_dw", 512, 3, 1, True),
    ("conv_10", 512, 1, 1, False),
    ("conv_11_dw", 512, 3, 1, True),
    ("conv_11", 512, 1, 1, False),
    ("conv_12_dw", 512, 3, 1, True),
    ("conv_12", 512, 1, 1, False),
    ("conv_13_dw", 512, 3, 2, True),
    ("conv_13", 1024, 1, 1, False),
    ("conv_14_dw", 1024, 3, 1, True),
    ("conv_14", 1024, 1, 1, False),
)
CONV_BN_EPS = 1e-3
HEAD_BN_EPS = 2e-5
EMBEDDING_DIM = 128
INPUT_SIZE = 112


class ConvBnPReLU(nn.Module):
    """One link of the chain; after ``fuse()`` the BatchNorm is an identity."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, depthwise: bool):
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            padding=kernel // 2,
            groups=in_ch if depthwise else 1,
            bias=False,
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_ch, eps=CONV_BN_EPS)
        self.prelu = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class SFace(nn.Module):
    """SFace backbone: ``(N, 3, 112, 112)`` RGB 0..255 -> ``(N, 128)`` unnormalised."""

    def __init__(self) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {}
        in_ch = 3
        for name, out_ch, kernel, stride, depthwise in SFACE_LAYERS:
            layers[name] = ConvBnPReLU(in_ch, out_ch, kernel, stride, depthwise)
            in_ch = out_ch
        self.body = nn.ModuleDict(layers)
        self.bn1: nn.Module = nn.BatchNorm2d(in_ch, eps=HEAD_BN_EPS)
        self.dropout = nn.Dropout(0.4)
        self.pre_fc1 = nn.Linear(in_ch * 7 * 7, EMBEDDING_DIM)
        self.fc1: nn.Module = nn.BatchNorm1d(EMBEDDING_DIM, eps=HEAD_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 127.5) * 0.0078125
        for layer in self.body.values():
            x = layer(x)
        x = self.dropout(self.bn1(x))
        return self.fc1(self.pre_fc1(torch.flatten(x, 1)))

    @torch.no_grad()
    def fuse(self) -> SFace:
        """Fold every BatchNorm into its Conv/Linear (inference only; ~2x faster on CPU)."""
        if isinstance(self.fc1, nn.Identity):
            return self
        for layer in self.body.values():
            assert isinstance(layer, ConvBnPReLU)
            layer.conv = _fold_conv(layer.conv, _bn_affine(layer.bn))
            layer.bn = nn.Identity()
        bn_scale, bn_shift = _bn_affine(self.bn1)
        spatial = self.pre_fc1.in_features // bn_scale.numel()
        scale = bn_scale.repeat_interleave(spatial)
        shift = bn_shift.repeat_interleave(spatial)
        linear = nn.Linear(self.pre_fc1.in_features, self.pre_fc1.out_features)
        out_scale, out_shift = _bn_affine(self.fc1)
        weight = self.pre_fc1.weight * scale[None, :]
        bias = self.pre_fc1.weight @ shift + self.pre_fc1.bias
        linear.weight.copy_(weight * out_scale[:, None])
        linear.bias.copy_(bias * out_scale + out_shift)
        self.bn1 = nn.Identity()
        self.pre_fc1 = linear
        self.fc1 = nn.Identity()
        return self


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode as ``y = scale * x + shift`` (per channel)."""
    assert isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d)
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _fold_conv(conv: nn.Conv2d, affine: tuple[torch.Tensor, torch.Tensor]) -> nn.Conv2d:
    scale, shift = affine
    # nn.Conv2d's attributes type as tuples of any length; a Conv2d's are pairs.
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        cast(tuple[int, int], conv.kernel_size),
        stride=cast(tuple[int, int], conv.stride),
        padding=cast("str | tuple[int, int]", conv.padding),
        groups=conv.groups,
        bias=True,
    )
    assert fused.bias is not None
    fused.weight.copy_(conv.weight * scale[:, None, None, None])
    fused.bias.copy_(shift if conv.bias is None else conv.bias * scale + shift)
    return fused
