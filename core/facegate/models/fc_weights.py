"""Large fully connected weights stored as int8 in an exported graph (weight-only).

SFace's last layer (``pre_fc1``, 50,176 -> 128) holds 26 of its 37 MB of weights, and
OpenVINO keeps a repacked copy of every float weight beside the graph's own: the layer alone
cost ~40 MiB of the API function's memory. Written as uint8 per group of
:data:`GROUP` inputs (a scale and a zero point each, the layout SFace was published in:
block-quantised int8, blocks of 64 along the input axis), OpenVINO's CPU plugin keeps the
bytes and dequantises group by group inside its fully connected kernel (the pattern it runs
weight-compressed language models with), at the same speed; ONNX Runtime folds the pattern
back to float32 when it loads the graph. Activations stay float32.

Measured on SFace (README, Performance): -39 MiB of OpenVINO memory, the embeddings within
cosine 0.99999 of the float graph's, LFW-dev accuracy and ROC AUC of the default model
unchanged within 0.001. :func:`compress_fc_weights` leaves every other layer as it was: the
convolutions have no such kernel and would be dequantised back to float at compile time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Inputs per quantisation group (one float32 scale and one uint8 zero point each).
GROUP = 64
#: Layers smaller than this many weights stay float: their memory is not worth a rounding.
MIN_WEIGHTS = 1 << 20
#: How the card's ``onnx`` record names this layout (``fc_weights``).
LAYOUT = f"uint8, asymmetric, groups of {GROUP} inputs"


@dataclass(frozen=True)
class CompressedLayer:
    """One layer written as int8: its name, its weight's shape and the largest error."""

    name: str
    shape: tuple[int, int]
    max_abs_error: float


def quantise_groups(weight: np.ndarray, group: int = GROUP) -> tuple[np.ndarray, ...]:
    """``(out, in)`` float weights -> uint8 ``(out, in/group, group)``, uint8 zero points and
    float32 scales ``(out, in/group, 1)``: each group's min..max mapped onto 0..255."""
    out_dim, in_dim = weight.shape
    blocks = weight.astype(np.float32).reshape(out_dim, in_dim // group, group)
    low = np.minimum(blocks.min(axis=-1, keepdims=True), 0.0)
    high = np.maximum(blocks.max(axis=-1, keepdims=True), 0.0)
    scale = ((high - low) / 255.0).astype(np.float32)
    scale[scale == 0] = 1.0
    zero = np.clip(np.round(-low / scale), 0, 255)
    q = np.clip(np.round(blocks / scale + zero), 0, 255).astype(np.uint8)
    return q, zero.astype(np.uint8), scale


def dequantise_groups(q: np.ndarray, zero: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float ``(out, in)`` weights that :func:`quantise_groups`'s arrays stand for."""
    blocks = (q.astype(np.float32) - zero.astype(np.float32)) * scale
    return blocks.reshape(q.shape[0], -1)


def _gemm_weight(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> str | None:
    """The initializer name of a plain ``Gemm(x, W^T) + b``'s weight, if it is one we may
    store as groups (large enough, its input axis a multiple of :data:`GROUP`)."""
    if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1:
        return None
    dims = list(initializers[node.input[1]].dims)
    if len(dims) != 2 or dims[0] * dims[1] < MIN_WEIGHTS or dims[1] % GROUP:
        return None
    return node.input[1]


def compress_fc_weights(model: onnx.ModelProto) -> list[CompressedLayer]:
    """Rewrite ``model`` in place: each large ``Gemm`` weight becomes uint8 groups and the
    ``Cast -> Sub -> Mul -> Reshape`` that dequantises them. Returns what was rewritten
    (empty: the graph is unchanged)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    done: list[CompressedLayer] = []
    for index in range(len(graph.node) - 1, -1, -1):
        name = _gemm_weight(graph.node[index], initializers)
        if name is None:
            continue
        weight = numpy_helper.to_array(initializers[name])
        q, zero, scale = quantise_groups(weight)
        error = float(np.abs(dequantise_groups(q, zero, scale) - weight).max())
        graph.initializer.remove(initializers.pop(name))
        stem = f"{name}.int8"
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{stem}.q"),
                numpy_helper.from_array(zero, f"{stem}.zero"),
                numpy_helper.from_array(scale, f"{stem}.scale"),
                numpy_helper.from_array(np.array(weight.shape, np.int64), f"{stem}.shape"),
            ]
        )
        dequantise = [
            helper.make_node("Cast", [f"{stem}.q"], [f"{stem}.qf"], to=TensorProto.FLOAT),
            helper.make_node("Cast", [f"{stem}.zero"], [f"{stem}.zf"], to=TensorProto.FLOAT),
            helper.make_node("Sub", [f"{stem}.qf", f"{stem}.zf"], [f"{stem}.centred"]),
            helper.make_node("Mul", [f"{stem}.centred", f"{stem}.scale"], [f"{stem}.groups"]),
            helper.make_node("Reshape", [f"{stem}.groups", f"{stem}.shape"], [name]),
        ]
        for offset, node in enumerate(dequantise):
            graph.node.insert(index + offset, node)
        done.append(CompressedLayer(name, (weight.shape[0], weight.shape[1]), error))
    if done:
        onnx.checker.check_model(model)
    return done


__all__ = [
    "GROUP",
    "LAYOUT",
    "MIN_WEIGHTS",
    "CompressedLayer",
    "compress_fc_weights",
    "dequantise_groups",
    "quantise_groups",
]
