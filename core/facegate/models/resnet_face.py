"""ResNet-50 face embedder: torchvision's architecture, adapted to 112x112 chips.

torchvision's ResNet-50 expects 224x224 ImageNet crops: a 7x7 stride-2 stem and a stride-2
max-pool bring 224 to 56 before the first stage. Face chips are 112x112, so the stem here is
a 3x3 stride-1 convolution (the adaptation InsightFace's IR networks use); the max-pool stays,
and the four stages see 56, 28, 14 and 7 pixels, exactly the feature-map sizes (and FLOPs) of
ImageNet ResNet-50 at 224. The classifier is replaced by the usual face-embedding head,
BN -> dropout -> FC -> BN over the 7x7x2048 map (it keeps where on the face a feature was,
which global pooling would throw away), giving a 512-d embedding. Input is RGB 0..255,
normalised inside like SFace, so every backbone takes the same chips.
"""

from __future__ import annotations

import torch
from torch import nn

EMBEDDING_DIM = 512
INPUT_SIZE = 112


class ResNet50Face(nn.Module):
    """``(N, 3, 112, 112)`` RGB 0..255 -> ``(N, 512)`` (unnormalised; the Embedder and the
    losses normalise)."""

    def __init__(self, embedding_dim: int = EMBEDDING_DIM, dropout: float = 0.4) -> None:
        super().__init__()
        # Imported here: serving any other model must not pay torchvision's 1.5 s import.
        from torchvision.models import resnet50

        body = resnet50(weights=None)
        body.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.stem = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool)
        self.stages = nn.Sequential(body.layer1, body.layer2, body.layer3, body.layer4)
        self.head = nn.Sequential(
            nn.BatchNorm2d(2048),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(2048 * 7 * 7, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 127.5) * 0.0078125
        return self.head(self.stages(self.stem(x)))
