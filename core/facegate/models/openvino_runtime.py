"""The served networks on OpenVINO: no torch in the process. Torch-free.

The same exported graphs as ONNX Runtime (:mod:`facegate.models.graphs`, sha256-checked),
compiled for the CPU by OpenVINO, whose kernels run SFace's depthwise convolutions several
times faster than ONNX Runtime's on this kind of CPU (README, Performance). The precision is
pinned to fp32: on CPUs with bf16 units OpenVINO would otherwise compute in bf16, which moves
SFace's embeddings by a cosine of 5e-4, more than the graphs may differ from their weights.

``openvino`` is imported when a model is compiled, not with this module.
"""

from __future__ import annotations

import sys
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.errors import ValidationError
from facegate.models.card import ModelCard
from facegate.models.graphs import detector_graphs, embedder_graph, yunet_graph

if TYPE_CHECKING:
    import openvino


#: OpenVINO's model converter, which ``import openvino`` loads when it can (inside a
#: ``try/except ImportError``): argparse, its CLI parser and the frontends' Python side, 0.14 s
#: of a 0.26 s import measured here, for a tool serving never calls (the graphs are read
#: with ``Core.read_model``).
CONVERTER = "openvino.tools.ovc"


_CORE_LOCK = threading.Lock()


def _core() -> openvino.Core:
    """One OpenVINO core per process: it holds the plugins, which load once.

    When OpenVINO is not imported yet, its converter is marked absent first (``None`` in
    ``sys.modules``, Python's way of making an import fail), so the package skips it; a
    process that imported OpenVINO already keeps what it has.

    Made under a lock, and made to pass one NumPy array through the bindings before it is
    returned: pybind11 initialises its NumPy API on first use, once per process, behind a
    once-flag and the GIL, and that first use racing in two threads (the pipeline's load
    threads: one compiling YuNet, two warming SFace and dlib) deadlocked a start-up about
    once in a few dozen here (``py-spy dump``: two threads in
    ``gil_safe_call_once_and_store<npy_api>``, one in ``compile_model``, for 10 minutes).
    Every compile and inference goes through this core, so after it no first use is left to
    race."""
    with _CORE_LOCK:
        return _make_core()


@lru_cache(maxsize=1)
def _make_core() -> openvino.Core:
    if "openvino" not in sys.modules and CONVERTER not in sys.modules:
        sys.modules[CONVERTER] = None  # type: ignore[assignment]
    import openvino as ov

    ov.Tensor(np.zeros((1,), dtype=np.float32))  # pybind11's NumPy API, initialised here
    return ov.Core()


def compile_graph(path: Path, *, threads: int | None = None, device: str = "cpu") -> Any:
    """``path`` compiled for the CPU: fp32, one stream (a function answers one request at a
    time), ``threads`` inference threads (None: OpenVINO's choice, one per core)."""
    if device != "cpu":
        raise ValidationError(
            f"FACEGATE_RUNTIME=openvino runs on the CPU here; for device {device!r} use "
            "FACEGATE_RUNTIME=onnxruntime (CUDA) or torch"
        )
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = _core()
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def _run(compiled: Any, x: np.ndarray) -> list[np.ndarray]:
    """The outputs of one inference, as arrays of their own (an infer request per call: a
    compiled model is shared, a request is not)."""
    request = compiled.create_infer_request()
    request.infer({0: np.ascontiguousarray(x, np.float32)})
    return [np.array(request.get_output_tensor(i).data) for i in range(len(compiled.outputs))]


class OpenVinoNetwork:
    """An embedding network's graph: ``(N, S, S, 3) uint8`` RGB chips in, ``(N, D)`` float32
    embeddings out (not normalised: :class:`~facegate.pipeline.embed.Embedder` does that)."""

    def __init__(
        self, model_dir: Path, card: ModelCard, *, threads: int | None = None, device: str = "cpu"
    ) -> None:
        self.compiled = compile_graph(
            embedder_graph(model_dir, card, fc_int8=True), threads=threads, device=device
        )
        self.card = card

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        (out,) = _run(self.compiled, chips)
        return out.astype(np.float32, copy=False)


class OpenVinoMTCNNNets:
    """MTCNN's three graphs behind :class:`~facegate.pipeline.mtcnn.MTCNNNets`."""

    def __init__(self, model_dir: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        graphs = detector_graphs(model_dir)
        self._pnet, self._rnet, self._onet = (
            compile_graph(graphs[name], threads=threads, device=device) for name in graphs
        )

    def pnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets, face = _run(self._pnet, x)
        return offsets, face

    def rnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets, face = _run(self._rnet, x)
        return offsets, face

    def onet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        offsets, landmarks, face = _run(self._onet, x)
        return offsets, landmarks, face


class OpenVinoYuNet:
    """YuNet's graph behind :class:`~facegate.pipeline.yunet.YuNetNet`.

    The graph's input size is dynamic; OpenVINO compiles it once and fits each new shape
    when it first sees it."""

    def __init__(self, model_dir: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        self.compiled = compile_graph(yunet_graph(model_dir), threads=threads, device=device)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return _run(self.compiled, x)


__all__ = ["OpenVinoMTCNNNets", "OpenVinoNetwork", "OpenVinoYuNet", "compile_graph"]
