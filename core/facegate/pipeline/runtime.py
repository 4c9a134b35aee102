"""The runtime seam: which engine runs the detector's and the embedders' networks.

``FACEGATE_RUNTIME`` (:attr:`facegate.settings.Settings.runtime`) picks it once per process:

- ``onnxruntime`` (the default): the ONNX graphs set-up exported beside the weights, on
  ONNX Runtime (``CUDAExecutionProvider`` when ``FACEGATE_DEVICE=cuda``). Nothing here then
  imports torch: a cold start pays 0.25 s for ONNX Runtime instead of 3.5 s for torch, and
  the functions' images need not carry torch at all.
- ``openvino``: the same graphs compiled by OpenVINO for the CPU (fp32), whose kernels run
  SFace several times faster than ONNX Runtime's here.
- ``torch``: the torch modules built from the safetensors weights, the reference the graphs
  are tested against (and what training evaluates with).

The torch modules are imported inside the two ``torch`` branches only: these are the one
place the serving path may reach torch, and the import contract names exactly these edges.
"""

from __future__ import annotations

from facegate.models.card import ModelCard, read_card
from facegate.pipeline.embed import Network
from facegate.pipeline.mtcnn import MTCNNNets
from facegate.settings import Settings


def detector_nets(settings: Settings) -> MTCNNNets:
    """MTCNN's three networks on the settings' runtime, device and threads."""
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


__all__ = ["detector_nets", "embedding_network"]
