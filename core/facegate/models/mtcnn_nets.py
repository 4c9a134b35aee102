"""MTCNN's three networks, with the weights that ship inside the facenet-pytorch wheel.

The layers are facenet-pytorch 2.5.3's ``PNet``, ``RNet`` and ``ONet`` (same names, so its
state dicts load strictly), defined here so that detection does not import the
``facenet_pytorch`` package: its ``__init__`` imports torchvision, whose own ``__init__``
imports every torchvision model definition, 1.5-2 s of a cold start for nothing we use. The
weight files are found through the package's import spec, which locates the installed package
without running it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facegate.errors import ModelNotFoundError


def weights_dir() -> Path:
    """``facenet_pytorch/data`` of the installed wheel (pnet.pt, rnet.pt, onet.pt)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("facenet-pytorch is not installed: MTCNN's weights ship in it")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _load(module: nn.Module, name: str) -> nn.Module:
    path = weights_dir() / f"{name}.pt"
    if not path.is_file():
        raise ModelNotFoundError(f"MTCNN weights {path} are missing from facenet-pytorch")
    module.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    return module.eval()


class PNet(nn.Module):
    """Proposal network: fully convolutional, a face probability and a box per 12x12 cell."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """Output network on 48x48 crops: probability, box and the five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


def load_nets() -> tuple[PNet, RNet, ONet]:
    """The three networks with their pretrained weights, in eval mode."""
    return (
        _load(PNet(), "pnet"),  # type: ignore[return-value]
        _load(RNet(), "rnet"),
        _load(ONet(), "onet"),
    )


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with intersection-over-union, as
    ``torchvision.ops.nms``: visit boxes by descending score, drop every later box whose IoU
    with a kept one exceeds ``threshold``; areas without ``+1``. Returns kept indices, best
    first. NumPy, one vector step per kept box."""
    if len(boxes) == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    b = boxes.detach().to("cpu", torch.float32).numpy()
    order = np.argsort(-scores.detach().to("cpu", torch.float32).numpy(), kind="stable")
    x1, y1, x2, y2 = b[order].T
    area = (x2 - x1) * (y2 - y1)
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        w = np.clip(np.minimum(x2[i], x2[i + 1 :]) - np.maximum(x1[i], x1[i + 1 :]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[i + 1 :]) - np.maximum(y1[i], y1[i + 1 :]), 0, None)
        inter = w * h
        alive[i + 1 :] &= ~(inter / (area[i] + area[i + 1 :] - inter) > threshold)
    return torch.as_tensor(np.array(keep, dtype=np.int64), device=boxes.device)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float
) -> torch.Tensor:
    """``nms`` within each group (image) independently; kept indices by descending score."""
    keep = [
        torch.nonzero(groups == g).flatten()[
            nms(boxes[groups == g], scores[groups == g], threshold)
        ]
        for g in torch.unique(groups)
    ]
    if not keep:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kept = torch.cat(keep)
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]
