"""The served networks on ONNX Runtime: no torch in the process. Torch-free.

The graphs come from :mod:`facegate.models.graphs` (checked against their recorded sha256).
``onnxruntime`` is imported when a session is made, not with this module, so that what only
reads cards (the light functions) does not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegate.models.card import ModelCard
from facegate.models.graphs import detector_graphs, embedder_graph, yunet_graph

if TYPE_CHECKING:
    import onnxruntime


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


class OnnxNetwork:
    """An embedding network's graph: ``(N, S, S, 3) uint8`` RGB chips in, ``(N, D)`` float32
    embeddings out (not normalised: :class:`~facegate.pipeline.embed.Embedder` does that)."""

    def __init__(
        self, model_dir: Path, card: ModelCard, *, threads: int | None = None, device: str = "cpu"
    ) -> None:
        self.session = session(embedder_graph(model_dir, card), threads=threads, device=device)
        self.card = card

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(chips, dtype=np.float32)
        (out,) = self.session.run(None, {"input": x})
        return np.asarray(out, dtype=np.float32)


class OnnxMTCNNNets:
    """MTCNN's three graphs behind :class:`~facegate.pipeline.mtcnn.MTCNNNets`."""

    def __init__(self, model_dir: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        graphs = detector_graphs(model_dir)
        self._pnet, self._rnet, self._onet = (
            session(graphs[name], threads=threads, device=device) for name in graphs
        )

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


class OnnxYuNet:
    """YuNet's graph behind :class:`~facegate.pipeline.yunet.YuNetNet`."""

    def __init__(self, model_dir: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        self.session = session(yunet_graph(model_dir), threads=threads, device=device)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(None, {"input": np.ascontiguousarray(x, np.float32)})
        return [np.asarray(o) for o in outputs]


__all__ = ["OnnxMTCNNNets", "OnnxNetwork", "OnnxYuNet", "cpu_session", "providers", "session"]
