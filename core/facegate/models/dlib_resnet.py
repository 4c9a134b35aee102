"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) as a torch module.

A ResNet-34-like network cut to 29 convolutions: a 7x7 stride-2 stem and a 3x3 stride-2 max
pool, five stages of two-convolution residual blocks (32, 64, 128, 256, 256 filters), a global
average pool and a bias-free 256 -> 128 linear layer. Input is ``(N, 3, 150, 150)`` float32
RGB in 0..255; the network's first step is dlib's ``(x - mean) / 256``.

What differs from torchvision's ResNets, each of which costs accuracy rather than an error
when got wrong:

- every convolution with stride 2 (stem and down-sampling blocks) is unpadded, so sizes go
  150 -> 72 -> 35 -> 17 -> 8 -> 3 (main branch) while the skip branch, a 2x2 average pool,
  gives 4: dlib's ``add_prev`` then adds the two with the smaller one zero-filled at the
  bottom/right and in the extra channels (:func:`add_zero_filled`); the stage then runs at 4;
- dlib's batch-norm was frozen to a per-channel affine layer; it is folded into the
  convolution before it (``convert_dlib.from_dlib_layers``), so every conv here has a bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: (filters, blocks, first block down-samples) for each stage, input side first.
STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)
STEM_FILTERS = 32
#: dlib's input_rgb_image means (R, G, B), as stored in the model file.
INPUT_MEAN = (122.782, 117.001, 104.298)
INPUT_SCALE = 256.0
INPUT_SIZE = 150
EMBEDDING_DIM = 128


def add_zero_filled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum at the larger size, the smaller tensor zero-filled at the
    bottom/right and in the extra channels."""
    if a.shape == b.shape:
        return a + b
    channels, height, width = (max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True))
    return _pad_to(a, channels, height, width) + _pad_to(b, channels, height, width)


def _pad_to(x: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    _, c, h, w = x.shape
    if (c, h, w) == (channels, height, width):
        return x
    return F.pad(x, (0, width - w, 0, height - h, 0, channels - c))  # keeps channels-last


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions (affine folded in) plus the skip; ``relu`` after the sum.

    A down-sampling block's first convolution has stride 2 and no padding; its skip is a
    2x2 stride-2 average pool of the block's input.
    """

    def __init__(self, in_channels: int, channels: int, downsample: bool) -> None:
        super().__init__()
        stride, padding = (2, 0) if downsample else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=padding)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.skip: nn.Module = nn.AvgPool2d(2, 2) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.conv2(F.relu(self.conv1(x)))
        return F.relu(add_zero_filled(main, self.skip(x)))


class Stem(nn.Module):
    """7x7 stride-2 unpadded convolution (affine folded in), relu, 3x3 stride-2 max pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, STEM_FILTERS, 7, stride=2)
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.conv(x)))


class DlibResNet(nn.Module):
    """``(N, 3, 150, 150)`` RGB 0..255 -> ``(N, 128)``, unnormalised (dlib compares
    euclidean distances at 0.6)."""

    mean: torch.Tensor  # a buffer (register_buffer), declared so that it types as a tensor

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor(INPUT_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.stem = Stem()
        stages: list[nn.Module] = []
        in_channels = STEM_FILTERS
        for channels, blocks, downsample in STAGES:
            stage = [
                ResidualBlock(in_channels if i == 0 else channels, channels, downsample and i == 0)
                for i in range(blocks)
            ]
            stages.append(nn.Sequential(*stage))
            in_channels = channels
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_channels, EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * (1.0 / INPUT_SCALE)
        x = self.stages(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))
