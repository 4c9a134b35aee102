"""A torch module behind the runtime-neutral network interface of the pipeline.

:class:`~facegate.pipeline.embed.Embedder` calls its network on numpy chips and gets numpy
embeddings back, so that the same embedder drives the graph runtimes
(:mod:`facegate.models.openvino_runtime`, :mod:`facegate.models.onnx_runtime`) and torch
modules alike. This is the torch side:
``FACEGATE_RUNTIME=torch``, training's evaluation, and the reference the exported graphs are
tested against.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchNetwork:
    """``(N, S, S, 3) uint8`` RGB chips -> ``(N, D)`` float32 (not normalised), in inference
    mode, channels-last (faster depthwise convolutions on CPU)."""

    def __init__(self, module: nn.Module, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).to(memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.ascontiguousarray(chips)
        if not chips.flags.writeable:  # e.g. np.asarray of a PIL image: torch wants to own it
            chips = chips.copy()
        x = torch.from_numpy(chips).to(self.device)
        x = x.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
        return self.module(x).float().cpu().numpy()


def configure_threads(num_threads: int | None) -> None:
    """torch's intra-op threads (None: torch's default, one per core)."""
    if num_threads:
        torch.set_num_threads(num_threads)


__all__ = ["TorchNetwork", "configure_threads"]
