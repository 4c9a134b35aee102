"""The served networks on ONNX Runtime: no torch in the process. Torch-free.

The graphs are the ones :mod:`facegate.models.onnx_export` wrote at set-up, found through the
model card (embedders) or ``<model_dir>/mtcnn/detector.json`` (the detector), and checked
against the sha256 recorded there before a session is made: a graph that is not the one
exported from the card's weights would embed faces that the card's ``weights_sha256`` does not
describe, and galleries and answers record that digest.

``onnxruntime`` is imported when a session is made, not with this module, so that what only
reads cards (the light functions) does not pay for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.errors import ModelNotFoundError
from facegate.models.card import ModelCard, model_path, sha256_file

if TYPE_CHECKING:
    import onnxruntime

DETECTOR_DIR = "mtcnn"
DETECTOR_RECORD = "detector.json"


def providers(device: str) -> list[str]:
    """Execution providers for ``device``: CUDA first (CPU for what it cannot place) when
    the settings ask for ``cuda``, else the CPU's."""
    if device.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(
    path: Path, *, threads: int | None = None, device: str = "cpu"
) -> onnxruntime.InferenceSession:
    """An inference session on ``path``: ``threads`` intra-op threads (None: one per core),
    one inter-op thread (these graphs are chains), every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initialisers are not ours to fix
    # No arena: it keeps the peak of every input shape it saw (PNet's pyramid levels, each
    # photo size, each batch) for the life of the process, which on Lambda is billed memory.
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), sess_options=options, providers=providers(device))


def cpu_session(path: Path, *, threads: int | None = None) -> onnxruntime.InferenceSession:
    return session(path, threads=threads, device="cpu")


def _checked(path: Path, sha256: object, what: str) -> Path:
    if not path.is_file():
        raise ModelNotFoundError(f"{what}: {path} is missing; run 'facegate setup'")
    if sha256_file(path) != sha256:
        raise ModelNotFoundError(f"{what}: {path} does not match its recorded sha256")
    return path


class OnnxNetwork:
    """An embedding network's graph: ``(N, S, S, 3) uint8`` RGB chips in, ``(N, D)`` float32
    embeddings out (not normalised: :class:`~facegate.pipeline.embed.Embedder` does that)."""

    def __init__(
        self, model_dir: Path, card: ModelCard, *, threads: int | None = None, device: str = "cpu"
    ) -> None:
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
        path = model_path(model_dir, card.model_id) / str(onnx.get("file"))
        self.session = session(
            _checked(path, onnx.get("sha256"), card.model_id), threads=threads, device=device
        )
        self.card = card

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(chips, dtype=np.float32)
        (out,) = self.session.run(None, {"input": x})
        return np.asarray(out, dtype=np.float32)


class OnnxMTCNNNets:
    """MTCNN's three graphs behind :class:`~facegate.pipeline.mtcnn.MTCNNNets`."""

    def __init__(self, model_dir: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        folder = Path(model_dir) / DETECTOR_DIR
        record_path = folder / DETECTOR_RECORD
        if not record_path.is_file():
            raise ModelNotFoundError(
                f"the detector's ONNX graphs are not in {folder}; run 'facegate setup'"
            )
        record: dict[str, Any] = json.loads(record_path.read_text())
        graphs = record.get("graphs", {})
        sessions = {}
        for name in ("pnet", "rnet", "onet"):
            if name not in graphs:
                raise ModelNotFoundError(f"{record_path} names no {name} graph")
            path = _checked(folder / str(graphs[name]["file"]), graphs[name]["sha256"], name)
            sessions[name] = session(path, threads=threads, device=device)
        self._pnet, self._rnet, self._onet = sessions["pnet"], sessions["rnet"], sessions["onet"]

    def pnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets, face = self._pnet.run(None, {"input": np.ascontiguousarray(x, np.float32)})
        return np.asarray(offsets), np.asarray(face)

    def rnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets, face = self._rnet.run(None, {"input": np.ascontiguousarray(x, np.float32)})
        return np.asarray(offsets), np.asarray(face)

    def onet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        offsets, landmarks, face = self._onet.run(
            None, {"input": np.ascontiguousarray(x, np.float32)}
        )
        return np.asarray(offsets), np.asarray(landmarks), np.asarray(face)


__all__ = ["OnnxMTCNNNets", "OnnxNetwork", "cpu_session", "providers", "session"]
