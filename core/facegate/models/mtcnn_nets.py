"""MTCNN's three networks, with the weights that ship inside the facenet-pytorch wheel, and
``TorchMTCNNNets``, the torch implementation of ``facegate.pipeline.mtcnn.MTCNNNets``.

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
import torch.nn.functional as F
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


class TorchMTCNNNets:
    """``MTCNNNets`` on torch: facenet-pytorch's ``PNet``, ``RNet`` and ``ONet`` with their
    bundled weights, on ``device``.

    The NHWC input is viewed (on CPU without a copy) as an NCHW tensor in channels-last memory
    (the layout facenet-pytorch's permuted input has too, and the faster one for these
    convolutions on CPU). PNet, which dominates detection, runs its own layers and weights in
    that memory: PReLU on row views (``_prelu_rows``), its two 1x1 heads as one convolution,
    the softmax's face output as a sigmoid. RNet and ONet run as defined; of their softmax only
    the face column is answered.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        pnet, rnet, onet = load_nets()
        self._pnet = pnet.to(self.device)
        self._rnet = rnet.to(self.device)
        self._onet = onet.to(self.device)
        # PNet's two 1x1 heads as one convolution: one pass over conv3's output instead of two.
        heads = (self._pnet.conv4_1, self._pnet.conv4_2)
        self._pnet_head_weight = torch.cat([conv.weight for conv in heads]).detach()
        self._pnet_head_bias = torch.cat([_bias(conv) for conv in heads]).detach()

    def _input(self, x: np.ndarray) -> torch.Tensor:
        """``(N, H, W, 3)`` numpy -> ``(N, 3, H, W)`` on the device, channels-last memory."""
        return torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def pnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``PNet.forward`` for NHWC input: box offsets ``(N, 4, h, w)`` (a strided view of the
        heads' channels-last output) and face probabilities ``(N, h, w)``, float32.

        The same layers and weights; PReLU runs on row views (``_prelu_rows``), the two heads
        run as one convolution, and the face probability is the two-way softmax's second
        output written as a sigmoid of the logit difference.
        """
        pnet = self._pnet
        y = _prelu_rows(pnet.conv1(self._input(x)), pnet.prelu1.weight)
        y = pnet.pool1(y)
        y = _prelu_rows(pnet.conv2(y), pnet.prelu2.weight)
        y = _prelu_rows(pnet.conv3(y), pnet.prelu3.weight)
        heads = F.conv2d(y, self._pnet_head_weight, self._pnet_head_bias)
        return heads[:, 2:].cpu().numpy(), torch.sigmoid(heads[:, 1] - heads[:, 0]).cpu().numpy()

    @torch.inference_mode()
    def rnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(K, 24, 24, 3)`` crops: box offsets ``(K, 4)`` and face probability ``(K,)``."""
        reg, prob = self._rnet(self._input(x))
        return reg.cpu().numpy(), prob[:, 1].contiguous().cpu().numpy()

    @torch.inference_mode()
    def onet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(K, 48, 48, 3)`` crops: box offsets ``(K, 4)``, relative landmarks ``(K, 10)``
        (5 x, then 5 y) and face probability ``(K,)``."""
        reg, landmarks, prob = self._onet(self._input(x))
        return (
            reg.cpu().numpy(),
            landmarks.cpu().numpy(),
            prob[:, 1].contiguous().cpu().numpy(),
        )


def _prelu_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.prelu`` on a channels-last ``(N, C, H, W)`` tensor, computed on its ``(N*H, W*C)``
    row view with the weights tiled along the row. Same values; torch's own kernel loops over
    runs of C (10 to 32) values on channels-last input, this one over whole rows."""
    n, c, h, w = x.shape
    if not x.is_contiguous(memory_format=torch.channels_last):
        return F.prelu(x, weight)
    rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c)
    return F.prelu(rows, weight.repeat(w)).view(n, h, w, c).permute(0, 3, 1, 2)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """A convolution's bias; every MTCNN convolution has one."""
    if conv.bias is None:
        raise ValueError("MTCNN convolution without a bias")
    return conv.bias
