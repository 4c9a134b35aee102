"""The runtime seam: which engine runs the detector's and the embedders' networks.

``FACEGATE_RUNTIME`` (:attr:`facegate.settings.Settings.runtime`) picks it once per process:

- ``openvino`` (the default): the ONNX graphs set-up exported beside the weights, compiled
  by OpenVINO for the CPU (fp32), whose kernels run SFace several times faster than ONNX
  Runtime's here. Nothing here then imports torch, and the functions' image carries none.
- ``onnxruntime``: the same graphs on ONNX Runtime (``CUDAExecutionProvider`` when
  ``FACEGATE_DEVICE=cuda``), the lightest import (0.25 s, against 3.5 s for torch).
- ``torch``: the torch modules built from the safetensors weights, the reference the graphs
  are tested against (and what training evaluates with).

``FACEGATE_DETECTOR`` (:attr:`facegate.settings.Settings.detector`) picks the detector:
MTCNN's three networks on the runtime above, or YuNet's one graph (set-up converts it; there
are no torch weights of it), on OpenVINO or ONNX Runtime; with ``torch``, on ONNX Runtime
where it is installed.

The torch modules are imported inside the two ``torch`` branches only: these are the one
place the serving path may reach torch, and the import contract names exactly these edges.
"""

from __future__ import annotations

from facegate.errors import ValidationError
from facegate.models.card import ModelCard, read_card
from facegate.pipeline.detect import DetectionBackend
from facegate.pipeline.embed import Network
from facegate.pipeline.mtcnn import MTCNNNets
from facegate.pipeline.yunet import YuNetDetector, YuNetNet
from facegate.settings import Settings


def detector_nets(settings: Settings) -> MTCNNNets | DetectionBackend:
    """What :class:`~facegate.pipeline.detect.FaceDetector` detects with: MTCNN's three
    networks on the settings' runtime, device and threads, or with ``detector="yunet"`` a
    ready :class:`~facegate.pipeline.yunet.YuNetDetector` on YuNet's graph."""
    if settings.detector == "yunet":
        return YuNetDetector(yunet_net(settings), max_side=settings.yunet_max_side)
    if settings.runtime == "torch":
        from facegate.models.mtcnn_nets import TorchMTCNNNets
        from facegate.models.torch_runner import configure_threads

        configure_threads(settings.num_threads)
        return TorchMTCNNNets(device=settings.device)
    if settings.runtime == "openvino":
        from facegate.models.openvino_runtime import OpenVinoMTCNNNets

        return OpenVinoMTCNNNets(
            settings.model_dir, threads=settings.num_threads, device=settings.device
        )
    from facegate.models.onnx_runtime import OnnxMTCNNNets

    return OnnxMTCNNNets(settings.model_dir, threads=settings.num_threads, device=settings.device)


def yunet_net(settings: Settings) -> YuNetNet:
    """YuNet's graph on the settings' runtime: OpenVINO or ONNX Runtime; with ``torch``
    (which has no YuNet of its own), ONNX Runtime if it is installed."""
    if settings.runtime == "openvino":
        from facegate.models.openvino_runtime import OpenVinoYuNet

        return OpenVinoYuNet(
            settings.model_dir, threads=settings.num_threads, device=settings.device
        )
    if settings.runtime == "torch":
        try:
            import onnxruntime  # noqa: F401  (the session below imports it; fail clearly first)
        except ImportError as error:
            raise ValidationError(
                "FACEGATE_DETECTOR=yunet runs on a graph runtime: with FACEGATE_RUNTIME=torch "
                "it needs onnxruntime installed, or set FACEGATE_RUNTIME=openvino or onnxruntime"
            ) from error
    from facegate.models.onnx_runtime import OnnxYuNet

    return OnnxYuNet(settings.model_dir, threads=settings.num_threads, device=settings.device)


#: Chips per embedding call when ``FACEGATE_EMBED_BATCH_SIZE`` is unset. OpenVINO sizes its
#: inference buffers to the batch (SFace: +23 MiB at 1, +60 at 8, +180 at 32) while its time
#: per face is the same from 8 up; the embedding job's peak on 32 uploads fell from 565 to
#: 410 MiB at 8, its photos/s unchanged (README, Performance). torch keeps its 32.
DEFAULT_EMBED_BATCH = {"openvino": 8, "onnxruntime": 8, "torch": 32}


def embedding_batch_size(settings: Settings) -> int:
    """``settings.embed_batch_size``, or the runtime's default where it is unset."""
    if settings.embed_batch_size is not None:
        return settings.embed_batch_size
    return DEFAULT_EMBED_BATCH[settings.runtime]


def embedding_network(settings: Settings, model_id: str) -> tuple[Network, ModelCard]:
    """The network of ``model_id`` (not a fused card: each of its parts) and its card."""
    model_dir = settings.model_dir
    if settings.runtime == "torch":
        from facegate.models.registry import load_network
        from facegate.models.torch_runner import TorchNetwork, configure_threads

        configure_threads(settings.num_threads)
        module, card = load_network(model_dir, model_id)
        return TorchNetwork(module, settings.device), card
    card = read_card(model_dir, model_id)
    if settings.runtime == "openvino":
        from facegate.models.openvino_runtime import OpenVinoNetwork

        network = OpenVinoNetwork(
            model_dir, card, threads=settings.num_threads, device=settings.device
        )
        return network, card
    from facegate.models.onnx_runtime import OnnxNetwork

    return OnnxNetwork(model_dir, card, threads=settings.num_threads, device=settings.device), card


__all__ = [
    "DEFAULT_EMBED_BATCH",
    "detector_nets",
    "embedding_batch_size",
    "embedding_network",
    "yunet_net",
]
