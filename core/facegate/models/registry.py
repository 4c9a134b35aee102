"""Model registry: a model card -> its network, built from local weights (sha256-checked).

The card names the architecture; this module knows how to build each one from local files.
Nothing here downloads: weights are put in place by ``facegate setup`` (SFace; dlib's ResNet
through ``assets.install_dlib``) or ``facegate models import`` (user-supplied
InceptionResnetV1 weights).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from facegate.errors import ModelNotFoundError
from facegate.models.card import ModelCard, model_path, read_card, sha256_file


def _build_sface(state: dict[str, torch.Tensor]) -> nn.Module:
    from facegate.models.sface import SFace

    model = SFace()
    model.load_state_dict(state, strict=False)
    return model.eval().fuse()


class _Standardised(nn.Module):
    """Wraps a network that expects ``(x - 127.5) / 128`` so every backbone takes 0..255."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x - 127.5) / 128.0)


def _build_inception(state: dict[str, torch.Tensor]) -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    model.load_state_dict(state, strict=True)
    return _Standardised(model).eval()


def _build_dlib_resnet(state: dict[str, torch.Tensor]) -> nn.Module:
    from facegate.models.dlib_resnet import DlibResNet

    model = DlibResNet()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _build_resnet50(state: dict[str, torch.Tensor]) -> nn.Module:
    from facegate.models.resnet_face import ResNet50Face

    model = ResNet50Face(embedding_dim=int(state["head.3.weight"].shape[0]))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _build_spiking_resformer(state: dict[str, torch.Tensor]) -> nn.Module:
    from facegate.models.spiking_resformer import SpikingResformer

    model = SpikingResformer(embedding_dim=int(state["head.2.weight"].shape[0]))
    model.load_state_dict(state, strict=True)
    return model.eval()


BUILDERS: dict[str, Callable[[dict[str, torch.Tensor]], nn.Module]] = {
    "sface": _build_sface,
    "inception_resnet_v1": _build_inception,
    "resnet50": _build_resnet50,
    "spiking_resformer": _build_spiking_resformer,
    "dlib_resnet": _build_dlib_resnet,
}


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or a torch ``.pt`` state dict (loaded weights-only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ModelNotFoundError(f"{path} does not hold a state dict")
    return state


def save_weights(
    model_dir: Path, model_id: str, state: dict[str, torch.Tensor], architecture: str
) -> Path:
    """``model_dir/model_id/model.safetensors``, written atomically (a half-written file never
    looks complete); the counterpart of ``load_state``."""
    from safetensors.torch import save_file

    target = model_path(model_dir, model_id)
    target.mkdir(parents=True, exist_ok=True)
    weights = target / "model.safetensors"
    tmp = target / "model.safetensors.part"
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata={"model_id": model_id, "architecture": architecture})
    tmp.replace(weights)
    return weights


def load_network(
    model_dir: Path, model_id: str, *, verify: bool = True
) -> tuple[nn.Module, ModelCard]:
    """Build the network a card describes; the weights' sha256 is checked against the card."""
    card = read_card(model_dir, model_id)
    weights = model_path(model_dir, model_id) / card.weights_file
    if not weights.is_file():
        raise ModelNotFoundError(
            f"weights file {weights} named by the {model_id!r} card is missing"
        )
    if verify and sha256_file(weights) != card.weights_sha256:
        raise ModelNotFoundError(f"{weights} does not match the sha256 in its model card")
    builder = BUILDERS.get(card.architecture)
    if builder is None:
        raise ModelNotFoundError(f"unknown architecture {card.architecture!r} in {model_id!r}")
    return builder(load_state(weights)), card
