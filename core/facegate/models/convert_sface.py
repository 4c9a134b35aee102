"""SFace ONNX (int8 block-quantised or fp32) -> ``SFace`` state dict.

Layers are matched by position along the chain and every attribute (kernel, stride, pads,
groups, epsilon, input scaling) is checked against ``SFace``: a file with another
architecture is refused rather than loaded into the wrong shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from facegate.models.onnx_chain import ChainNode, read_chain
from facegate.models.sface import SFACE_LAYERS, SFace


class ConversionError(ValueError):
    """The ONNX file is not the SFace chain this converter knows."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


def _bn(prefix: str, node: ChainNode, eps: float) -> dict[str, np.ndarray]:
    _expect(
        node.op == "BatchNormalization", f"{prefix}: expected BatchNormalization, got {node.op}"
    )
    _expect(
        abs(node.attrs.get("epsilon", 1e-5) - eps) < eps * 1e-3,
        f"{prefix}: epsilon {node.attrs.get('epsilon')} != {eps}",
    )
    gamma, beta, mean, var = node.constants
    return {
        f"{prefix}.weight": gamma,
        f"{prefix}.bias": beta,
        f"{prefix}.running_mean": mean,
        f"{prefix}.running_var": var,
    }


def chain_to_state_dict(chain: list[ChainNode]) -> dict[str, torch.Tensor]:
    """Map the compute chain onto ``SFace`` parameter names, validating as it goes."""
    ops = iter(chain)
    sub, mul = next(ops), next(ops)
    _expect(sub.op == "Sub" and np.allclose(sub.constants[0], 127.5), "input must be x - 127.5")
    _expect(mul.op == "Mul" and np.allclose(mul.constants[0], 1 / 128), "input must be * 1/128")
    state: dict[str, np.ndarray] = {}
    in_ch = 3
    for name, out_ch, kernel, stride, depthwise in SFACE_LAYERS:
        conv, bn, prelu = next(ops), next(ops), next(ops)
        _expect(conv.op == "Conv", f"{name}: expected Conv, got {conv.op}")
        weight = conv.constants[0]
        groups = in_ch if depthwise else 1
        _expect(
            weight.shape == (out_ch, in_ch // groups, kernel, kernel),
            f"{name}: weight shape {weight.shape}",
        )
        _expect(list(conv.attrs.get("strides", [1, 1])) == [stride, stride], f"{name}: stride")
        _expect(conv.attrs.get("group", 1) == groups, f"{name}: groups")
        pad = kernel // 2
        _expect(list(conv.attrs.get("pads", [0] * 4)) == [pad] * 4, f"{name}: pads")
        _expect(len(conv.constants) == 1, f"{name}: unexpected conv bias")
        state[f"body.{name}.conv.weight"] = weight
        state.update(_bn(f"body.{name}.bn", bn, 1e-3))
        _expect(prelu.op == "PRelu", f"{name}: expected PRelu, got {prelu.op}")
        state[f"body.{name}.prelu.weight"] = prelu.constants[0].reshape(-1)
        in_ch = out_ch
    state.update(_bn("bn1", next(ops), 2e-5))
    rest = list(ops)
    _expect([n.op for n in rest] == ["Dropout", "Flatten", "Gemm", "BatchNormalization"], "head")
    gemm = rest[2]
    _expect(gemm.attrs.get("transB", 0) == 1, "Gemm must have transB=1")
    state["pre_fc1.weight"], state["pre_fc1.bias"] = gemm.constants[0], gemm.constants[1]
    state.update(_bn("fc1", rest[3], 2e-5))
    return {
        k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()
    }


def convert_sface(onnx_path: str | Path) -> tuple[dict[str, torch.Tensor], onnx.ModelProto]:
    """State dict for ``SFace`` and a dequantised fp32 copy of the ONNX graph.

    The state dict is loaded into a fresh ``SFace`` with ``strict=True`` before returning,
    so a missing or extra tensor fails here, at set-up, not at serving time.
    """
    chain, fp32_model = read_chain(onnx.load(str(onnx_path)))
    state = chain_to_state_dict(chain)
    model = SFace()
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    _expect(set(state) == expected, f"tensor names differ: {sorted(set(state) ^ expected)[:5]}")
    model.load_state_dict(state, strict=False)
    return state, fp32_model
