"""Reading a chain-shaped ONNX graph (Conv/BN/PReLU ... Gemm/BN) into plain numpy tensors.

Shipped SFace files store weights as block-quantised int8 behind ``DequantizeLinear`` (with
``block_size``, opset 21) followed by ``Reshape``; the original fp32 file stores them
directly. Both reduce to the same thing here: every node whose inputs are all constants is
evaluated once in numpy (constant folding), leaving the compute nodes with fp32 weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Nodes that only transform constants; evaluated at conversion time.
_FOLDABLE = {"DequantizeLinear", "Reshape", "Constant", "Identity", "Cast"}


@dataclass
class ChainNode:
    """A compute node with its constant inputs resolved to fp32 numpy arrays."""

    op: str
    attrs: dict[str, Any]
    constants: list[np.ndarray] = field(default_factory=list)


def dequantize_linear(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int, block_size: int
) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21), including blocked quantisation."""
    x = x.astype(np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.zeros_like(scale) if zero_point is None else zero_point.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return (x - zp.reshape(())) * scale.reshape(())
    axis = axis % x.ndim
    if block_size:
        scale = np.repeat(scale, block_size, axis=axis)
        zp = np.repeat(zp, block_size, axis=axis)
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, x.shape[axis])
        return (x - zp[tuple(index)]) * scale[tuple(index)]
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - zp.reshape(shape)) * scale.reshape(shape)


def _fold(node: onnx.NodeProto, inputs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    if node.op_type == "DequantizeLinear":
        zp = inputs[2] if len(inputs) > 2 else None
        return dequantize_linear(
            inputs[0], inputs[1], zp, attrs.get("axis", 1), attrs.get("block_size", 0)
        )
    if node.op_type == "Reshape":
        return inputs[0].reshape(inputs[1].astype(np.int64))
    if node.op_type == "Constant":
        return numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.asarray(attrs)
    if node.op_type == "Cast":
        return inputs[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    return inputs[0]


def read_chain(model: onnx.ModelProto) -> tuple[list[ChainNode], onnx.ModelProto]:
    """Compute nodes in graph order with fp32 constants, and an fp32 copy of the model.

    The copy has every foldable constant subgraph replaced by a plain initializer: a
    dequantised ONNX file that standard runtimes can execute.
    """
    graph = model.graph
    values: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init) for init in graph.initializer
    }
    chain: list[ChainNode] = []
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in _FOLDABLE and all(not i or i in values for i in node.input):
            inputs = [values[i] for i in node.input if i]
            values[node.output[0]] = _fold(node, inputs, attrs)
            continue
        kept.append(node)
        constants = [values[i].astype(np.float32) for i in node.input[1:] if i in values]
        chain.append(ChainNode(node.op_type, attrs, constants))
    return chain, _rebuild(model, kept, values)


def _rebuild(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], values: dict[str, np.ndarray]
) -> onnx.ModelProto:
    used = {name for node in nodes for name in node.input}
    initializers = [
        numpy_helper.from_array(
            v.astype(np.float32) if v.dtype.kind == "f" or v.dtype == np.int8 else v, name
        )
        for name, v in values.items()
        if name in used
    ]
    graph_inputs = [i for i in model.graph.input if i.name not in values]
    graph = helper.make_graph(
        nodes, model.graph.name, graph_inputs, list(model.graph.output), initializers
    )
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def load_onnx(path: str | Path) -> onnx.ModelProto:
    return onnx.load(str(path))
