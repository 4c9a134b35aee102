"""ONNX graphs of the served networks, written at set-up beside their weights.

Torch is the reference and the tool that converts weights; it is not what serves them. Set-up
(and ``facegate export``) traces each served network once into an ONNX graph, which
:mod:`facegate.models.onnx_runtime` then runs without torch: a cold start loads ONNX Runtime
(0.25 s, 47 MB) instead of torch (3.5 s, 650 MB).

Every graph takes the layout the numpy side already holds, NHWC float32, and does the
transposition itself: the embedders take RGB ``0..255`` chips ``(N, S, S, 3)`` and normalise
inside, as their torch modules do; MTCNN's nets take the normalised NHWC crops of
:class:`facegate.pipeline.mtcnn.FastMTCNN` and answer the face probability only (the
softmax's second column; for PNet its two-way softmax written as a sigmoid of the logit
difference, the same value). Batch axes are dynamic, and PNet's spatial axes too.

Each export is checked against the module it came from before it is kept (a deterministic
batch, min cosine or max abs difference), written atomically, and recorded with its sha256,
its opset and the torch version that traced it: in the model card (``onnx``) for an
embedder, in ``<model_dir>/mtcnn/detector.json`` for the detector, whose weights come from the
facenet-pytorch wheel (recorded by their sha256 too).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from facegate.errors import ModelNotFoundError
from facegate.models.card import ModelCard, model_path, sha256_file, write_card
from facegate.models.fc_weights import LAYOUT, compress_fc_weights
from facegate.models.graphs import DETECTOR_DIR, DETECTOR_RECORD
from facegate.models.mtcnn_nets import ONet, PNet, RNet, load_nets, weights_dir
from facegate.models.onnx_runtime import cpu_session

#: Opset 17: every op of these networks, and what ONNX Runtime 1.16+ and OpenVINO read.
OPSET = 17
ONNX_FILE = "model.onnx"
#: The graph with large fully connected weights as int8 groups, which OpenVINO serves.
FC_INT8_FILE = "model.fc-int8.onnx"
#: An export is kept only if it reproduces its module this closely on the check batch.
MIN_COSINE = 0.9999
MAX_PROB_DIFF = 1e-4


class _NHWCEmbedder(nn.Module):
    """An embedder taking ``(N, S, S, 3)`` float32 RGB 0..255 (what the pipeline holds)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))


class _PNetGraph(nn.Module):
    """PNet on normalised NHWC input: box offsets ``(N, 4, h, w)``, face probability
    ``(N, h, w)``."""

    def __init__(self, net: PNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        y = net.prelu1(net.conv1(x.permute(0, 3, 1, 2)))
        y = net.pool1(y)
        y = net.prelu3(net.conv3(net.prelu2(net.conv2(y))))
        logits = net.conv4_1(y)
        return net.conv4_2(y), torch.sigmoid(logits[:, 1] - logits[:, 0])


class _RefineGraph(nn.Module):
    """RNet or ONet on normalised NHWC crops, answering the face probability only."""

    def __init__(self, net: RNet | ONet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x.permute(0, 3, 1, 2))
        return (*out[:-1], out[-1][:, 1])


def _export(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> None:
    """Trace ``module`` into ``path`` (atomically) with dynamic batch and, for 4-d outputs
    of a fully convolutional net, spatial axes."""
    axes: dict[str, dict[int, str]] = {"input": {0: "batch"}}
    if isinstance(module, _PNetGraph):
        axes["input"] |= {1: "height", 2: "width"}
        axes["offsets"] = {0: "batch", 2: "rows", 3: "cols"}
        axes["face"] = {0: "batch", 1: "rows", 2: "cols"}
    else:
        axes |= {name: {0: "batch"} for name in outputs}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.part")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's; it is the one
        # whose graphs were measured to match (cosine 0.9999998) and that needs no onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    tmp.replace(path)


def _run_onnx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(o) for o in cpu_session(path, threads=1).run(None, {"input": x})]


def _record(path: Path) -> dict[str, Any]:
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "opset": OPSET,
        "input": "NHWC float32",
        "exported_with": f"torch {torch.__version__}",
    }


def _cosines(expected: np.ndarray, got: np.ndarray) -> np.ndarray:
    return np.sum(expected * got, axis=1) / (
        np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1)
    )


def _compress(path: Path, check: np.ndarray, expected: np.ndarray) -> dict[str, Any] | None:
    """Beside the float graph ``path``, the same graph with its large fully connected
    weights as int8 groups (:mod:`fc_weights`, for OpenVINO), kept when it still reproduces
    ``expected`` to :data:`MIN_COSINE`; its record, or None (no layer large enough, or too
    far off). ONNX Runtime keeps the float graph: it folds the pattern back to float32 when
    it loads it and holds both copies (+43 MiB measured for SFace)."""
    model = onnx.load(str(path))
    layers = compress_fc_weights(model)
    if not layers:
        return None
    target = path.with_name(FC_INT8_FILE)
    tmp = target.with_suffix(".onnx.part")
    onnx.save(model, str(tmp))
    (got,) = _run_onnx(tmp, check)
    cosine = _cosines(expected, got)
    if not np.all(cosine > MIN_COSINE):
        tmp.unlink()
        return None
    tmp.replace(target)
    return {
        "file": target.name,
        "sha256": sha256_file(target),
        "layout": LAYOUT,
        "layers": [
            {"name": layer.name, "shape": list(layer.shape), "max_abs_error": layer.max_abs_error}
            for layer in layers
        ],
        "check_min_cosine": round(float(cosine.min()), 7),
    }


def export_embedder(model_dir: Path, card: ModelCard, network: nn.Module) -> ModelCard:
    """Write ``network`` (the card's, as the registry builds it) as ``model.onnx`` beside its
    weights (and beside it the graph with its large fully connected layers as int8 groups,
    where that still reproduces it), and return the card with its ``onnx`` record (written too).

    :class:`ModelNotFoundError` when the graph does not reproduce the network (cosine
    below :data:`MIN_COSINE` on a deterministic batch): such a graph is never kept."""
    size = card.input_size
    rng = np.random.default_rng(0)
    check = rng.integers(0, 256, size=(4, size, size, 3)).astype(np.float32)
    wrapped = _NHWCEmbedder(network.eval())
    path = model_path(model_dir, card.model_id) / ONNX_FILE
    _export(wrapped, torch.from_numpy(check[:1]), path, ["embedding"])
    with torch.inference_mode():
        expected = wrapped(torch.from_numpy(check)).numpy()
    (got,) = _run_onnx(path, check)
    cosine = _cosines(expected, got)
    if not np.all(cosine > MIN_COSINE):
        path.unlink()
        raise ModelNotFoundError(
            f"the ONNX graph of {card.model_id!r} does not reproduce it "
            f"(min cosine {float(cosine.min()):.6f}); not kept"
        )
    fc_weights = _compress(path, check, expected)
    record = _record(path) | {
        "input": f"NHWC float32 RGB 0..255, {size}x{size}",
        "weights_sha256": card.weights_sha256,
        "check_min_cosine": round(float(cosine.min()), 7),
        "fc_weights": fc_weights,
    }
    exported = replace(card, onnx=record)
    write_card(model_dir, exported)
    return exported


def detector_dir(model_dir: Path) -> Path:
    return Path(model_dir) / DETECTOR_DIR


def export_mtcnn(model_dir: Path) -> dict[str, Any]:
    """Write MTCNN's three nets (facenet-pytorch 2.5.3's weights) as ONNX graphs under
    ``<model_dir>/mtcnn/`` with their record; the record, as written."""
    pnet, rnet, onet = load_nets()
    target = detector_dir(model_dir)
    rng = np.random.default_rng(0)
    graphs: dict[str, Any] = {}
    specs: list[tuple[str, nn.Module, tuple[int, int], list[str]]] = [
        ("pnet", _PNetGraph(pnet), (37, 53), ["offsets", "face"]),
        ("rnet", _RefineGraph(rnet), (24, 24), ["offsets", "face"]),
        ("onet", _RefineGraph(onet), (48, 48), ["offsets", "landmarks", "face"]),
    ]
    for name, module, (h, w), outputs in specs:
        check = rng.uniform(-1, 1, size=(3, h, w, 3)).astype(np.float32)
        path = target / f"{name}.onnx"
        _export(module, torch.from_numpy(check[:1]), path, outputs)
        with torch.inference_mode():
            expected = [t.numpy() for t in module(torch.from_numpy(check))]
        got = _run_onnx(path, check)
        worst = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
        if worst > MAX_PROB_DIFF:
            path.unlink()
            raise ModelNotFoundError(f"the ONNX graph of MTCNN's {name} differs by {worst}")
        graphs[name] = _record(path) | {
            "outputs": outputs,
            "weights": f"facenet_pytorch/data/{name}.pt",
            "weights_sha256": sha256_file(weights_dir() / f"{name}.pt"),
            "check_max_abs_diff": worst,
        }
    record = {
        "detector": "mtcnn",
        "source": "facenet-pytorch==2.5.3 (weights in its wheel)",
        "license": "MIT (facenet-pytorch)",
        "input": "NHWC float32, (x - 127.5) * 0.0078125",
        "graphs": graphs,
    }
    tmp = target / f"{DETECTOR_RECORD}.part"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(target / DETECTOR_RECORD)
    return record


def mtcnn_exported(model_dir: Path) -> bool:
    """Whether the detector's graphs are in place and match their record and the weights
    installed now (a new facenet-pytorch would need a new export)."""
    record_path = detector_dir(model_dir) / DETECTOR_RECORD
    if not record_path.is_file():
        return False
    try:
        graphs = json.loads(record_path.read_text())["graphs"]
        return all(
            sha256_file(detector_dir(model_dir) / g["file"]) == g["sha256"]
            and sha256_file(weights_dir() / f"{name}.pt") == g["weights_sha256"]
            for name, g in graphs.items()
        )
    except (OSError, KeyError, TypeError, ValueError):
        return False


def embedder_exported(model_dir: Path, card: ModelCard) -> bool:
    """Whether the card's graph is in place, intact and made from the card's weights."""
    record = card.onnx
    if not record or record.get("weights_sha256") != card.weights_sha256:
        return False
    if "fc_weights" not in record:  # exported before large layers were stored as int8
        return False
    folder = model_path(model_dir, card.model_id)
    graphs = [record, *([record["fc_weights"]] if record["fc_weights"] else [])]
    return all(
        (folder / str(g.get("file"))).is_file()
        and sha256_file(folder / str(g.get("file"))) == g.get("sha256")
        for g in graphs
    )


__all__ = [
    "DETECTOR_DIR",
    "DETECTOR_RECORD",
    "FC_INT8_FILE",
    "ONNX_FILE",
    "OPSET",
    "detector_dir",
    "embedder_exported",
    "export_embedder",
    "export_mtcnn",
    "mtcnn_exported",
]
