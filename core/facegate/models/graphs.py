"""Where the exported ONNX graphs of a model folder are, checked before any runtime loads
them. Torch-free, and free of every runtime.

The graphs are the ones :mod:`facegate.models.onnx_export` wrote at set-up, found through the
model card (embedders), ``<model_dir>/mtcnn/detector.json`` (the detector) or
``<model_dir>/yunet/detector.json`` (YuNet, the alternative detector), and checked
against the sha256 recorded there: a graph that is not the one exported from the card's
weights would embed faces that the card's ``weights_sha256`` does not describe, and
galleries and answers record that digest. ONNX Runtime
(:mod:`facegate.models.onnx_runtime`) and OpenVINO (:mod:`facegate.models.openvino_runtime`)
read the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facegate.errors import ModelNotFoundError
from facegate.models.card import ModelCard, model_path, sha256_file

DETECTOR_DIR = "mtcnn"
DETECTOR_RECORD = "detector.json"
DETECTOR_NETS = ("pnet", "rnet", "onet")


def _checked(path: Path, sha256: object, what: str) -> Path:
    if not path.is_file():
        raise ModelNotFoundError(f"{what}: {path} is missing; run 'facegate setup'")
    if sha256_file(path) != sha256:
        raise ModelNotFoundError(f"{what}: {path} does not match its recorded sha256")
    return path


def embedder_graph(model_dir: Path, card: ModelCard, *, fc_int8: bool = False) -> Path:
    """The card's graph, exported from the card's weights and intact; with ``fc_int8``, the
    one whose large fully connected weights are int8 groups where the export wrote one
    (:mod:`facegate.models.fc_weights`: OpenVINO's kernels keep those bytes)."""
    onnx = card.onnx
    if not onnx:
        raise ModelNotFoundError(
            f"model {card.model_id!r} has no ONNX graph; run 'facegate setup' (or "
            "'facegate export' for a trained model), or serve it with FACEGATE_RUNTIME=torch"
        )
    if onnx.get("weights_sha256") != card.weights_sha256:
        raise ModelNotFoundError(
            f"the ONNX graph of {card.model_id!r} was exported from other weights; "
            "run 'facegate setup'"
        )
    graph: dict[str, Any] = onnx.get("fc_weights") or onnx if fc_int8 else onnx
    path = model_path(model_dir, card.model_id) / str(graph.get("file"))
    return _checked(path, graph.get("sha256"), card.model_id)


def detector_graphs(model_dir: Path) -> dict[str, Path]:
    """MTCNN's three graphs by name, each intact."""
    folder = Path(model_dir) / DETECTOR_DIR
    record_path = folder / DETECTOR_RECORD
    if not record_path.is_file():
        raise ModelNotFoundError(
            f"the detector's ONNX graphs are not in {folder}; run 'facegate setup'"
        )
    record: dict[str, Any] = json.loads(record_path.read_text())
    graphs = record.get("graphs", {})
    found = {}
    for name in DETECTOR_NETS:
        if name not in graphs:
            raise ModelNotFoundError(f"{record_path} names no {name} graph")
        found[name] = _checked(folder / str(graphs[name]["file"]), graphs[name]["sha256"], name)
    return found


YUNET_DIR = "yunet"
YUNET_RECORD = "detector.json"
YUNET_FILE = "yunet_2023mar_fp32.onnx"


def yunet_graph(model_dir: Path) -> Path:
    """YuNet's graph (the alternative detector), converted at set-up and intact."""
    folder = Path(model_dir) / YUNET_DIR
    record_path = folder / YUNET_RECORD
    if not record_path.is_file():
        raise ModelNotFoundError(f"YuNet's ONNX graph is not in {folder}; run 'facegate setup'")
    record: dict[str, Any] = json.loads(record_path.read_text())
    return _checked(folder / str(record.get("file")), record.get("sha256"), "yunet")


__all__ = [
    "DETECTOR_DIR",
    "DETECTOR_NETS",
    "DETECTOR_RECORD",
    "YUNET_DIR",
    "YUNET_FILE",
    "YUNET_RECORD",
    "detector_graphs",
    "embedder_graph",
    "yunet_graph",
]
