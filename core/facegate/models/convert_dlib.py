"""Parsed dlib layers (``dlib_format``) -> ``DlibResNet`` state dict, affine layers folded.

The layers are walked in the order ``DlibResNet`` implies and every hyper-parameter (filter
count, kernel, stride, padding, pooling, input means and size, the skip/add wiring) is
checked on the way: a dlib file with another architecture is refused with a ``ValueError``
rather than loaded into the wrong shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from facegate.models.dlib_format import DlibLayer
from facegate.models.dlib_resnet import (
    EMBEDDING_DIM,
    INPUT_MEAN,
    INPUT_SIZE,
    STAGES,
    STEM_FILTERS,
    DlibResNet,
)


class DlibConversionError(ValueError):
    """The dlib network is not the face-recognition ResNet ``DlibResNet`` implements."""


class _Cursor:
    """The layers one at a time, each checked for its kind and hyper-parameters."""

    def __init__(self, layers: list[DlibLayer]) -> None:
        self._layers: Iterator[tuple[int, DlibLayer]] = iter(enumerate(layers))

    def take(self, kind: str, **expected: Any) -> tuple[int, DlibLayer]:
        index, layer = next(self._layers, (-1, None))
        if layer is None:
            raise DlibConversionError(f"the network ends where a {kind} layer is expected")
        if layer.kind != kind:
            raise DlibConversionError(f"layer {index}: expected {kind}, got {layer.kind}")
        for name, value in expected.items():
            if layer.params.get(name) != value:
                got = layer.params.get(name)
                raise DlibConversionError(f"layer {index} ({kind}): {name} is {got}, not {value}")
        return index, layer

    def rest(self) -> list[DlibLayer]:
        return [layer for _, layer in self._layers]


def _conv(
    cursor: _Cursor, prefix: str, in_ch: int, out_ch: int, kernel: int, stride: int, pad: int
) -> dict[str, np.ndarray]:
    """One ``con`` + ``affine`` pair as a biased convolution: ``W * g``, ``b * g + beta``."""
    index, con = cursor.take(
        "con",
        num_filters=out_ch,
        nr=kernel,
        nc=kernel,
        stride_y=stride,
        stride_x=stride,
        padding_y=pad,
        padding_x=pad,
    )
    filters = con.params["filters"]
    if filters.shape != (out_ch, in_ch, kernel, kernel):
        raise DlibConversionError(f"layer {index}: filters {filters.shape}, input {in_ch}")
    index, affine = cursor.take("affine")
    gamma = affine.params["gamma"].astype(np.float64)
    beta = affine.params["beta"].astype(np.float64)
    if gamma.shape != (1, out_ch, 1, 1) or beta.shape != gamma.shape:
        raise DlibConversionError(f"layer {index}: affine {gamma.shape} is not per-channel")
    scale, shift = gamma.reshape(-1), beta.reshape(-1)
    return {
        f"{prefix}.weight": filters.astype(np.float64) * scale[:, None, None, None],
        f"{prefix}.bias": con.params["biases"].astype(np.float64) * scale + shift,
    }


def _block(
    cursor: _Cursor, prefix: str, in_ch: int, out_ch: int, downsample: bool
) -> dict[str, np.ndarray]:
    opened, _ = cursor.take("tag")
    stride, pad = (2, 0) if downsample else (1, 1)
    state = _conv(cursor, f"{prefix}.conv1", in_ch, out_ch, 3, stride, pad)
    cursor.take("relu")
    state |= _conv(cursor, f"{prefix}.conv2", out_ch, out_ch, 3, 1, 1)
    added = opened
    if downsample:
        added, _ = cursor.take("tag")
        index, skip = cursor.take("skip")
        if skip.source != opened:
            raise DlibConversionError(f"layer {index}: skip to {skip.source}, not {opened}")
        pool = {"nr": 2, "nc": 2, "stride_y": 2, "stride_x": 2, "padding_y": 0, "padding_x": 0}
        cursor.take("avg_pool", **pool)
    index, add = cursor.take("add_prev")
    if add.source != added:
        raise DlibConversionError(f"layer {index}: add_prev of {add.source}, not {added}")
    cursor.take("relu")
    return state


def from_dlib_layers(layers: list[DlibLayer]) -> dict[str, torch.Tensor]:
    """``DlibResNet``'s state dict from ``read_dlib_net``'s layers.

    Folding is done in float64 and rounded once to float32. The result is loaded into a
    fresh ``DlibResNet`` with ``strict=True`` before returning, so a missing or extra tensor
    fails here, at set-up, not at serving time.
    """
    cursor = _Cursor(layers)
    index, inp = cursor.take("input", nr=INPUT_SIZE, nc=INPUT_SIZE)
    if not np.allclose(inp.params["mean"], INPUT_MEAN, atol=1e-3):
        raise DlibConversionError(f"layer {index}: input means {inp.params['mean']}")
    state = _conv(cursor, "stem.conv", 3, STEM_FILTERS, 7, 2, 0)
    cursor.take("relu")
    pool = {"nr": 3, "nc": 3, "stride_y": 2, "stride_x": 2, "padding_y": 0, "padding_x": 0}
    cursor.take("max_pool", **pool)
    in_ch = STEM_FILTERS
    for s, (channels, blocks, downsample) in enumerate(STAGES):
        for b in range(blocks):
            prefix = f"stages.{s}.{b}"
            state |= _block(cursor, prefix, in_ch, channels, downsample and b == 0)
            in_ch = channels
    everything = {"nr": 0, "nc": 0, "stride_y": 1, "stride_x": 1, "padding_y": 0, "padding_x": 0}
    cursor.take("avg_pool", **everything)
    index, fc = cursor.take("fc", num_inputs=in_ch, num_outputs=EMBEDDING_DIM)
    if "biases" in fc.params:
        raise DlibConversionError(f"layer {index}: fc has a bias; DlibResNet's has none")
    state["fc.weight"] = fc.params["weights"].T
    extra = [layer.kind for layer in cursor.rest() if layer.kind != "loss_metric"]
    if extra:
        raise DlibConversionError(f"layers after the fc layer: {extra}")
    tensors = {
        k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()
    }
    DlibResNet().load_state_dict(tensors, strict=True)
    return tensors
