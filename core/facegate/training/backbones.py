"""Backbones to train, by name: the same networks the serving registry builds from weights.

``resnet50`` and ``spiking_resformer`` (SpikingResformer-Ti, T=4) start from random weights;
``sface`` starts from the converted SFace weights (fine-tuning, with its BatchNorm layers
unfused so they can learn). Every backbone takes ``(N, 3, 112, 112)`` RGB 0..255 chips
(``facegate prepare`` makes them) and returns unnormalised embeddings; losses and the serving
Embedder normalise.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from facegate.models.card import model_path, read_card

BACKBONES = ("resnet50", "sface", "spiking_resformer")


def build_backbone(
    name: str, model_dir: Path | None = None, *, embedding_dim: int = 512
) -> nn.Module:
    """A trainable backbone; ``sface`` (128-d) needs ``model_dir`` holding the converted
    weights. ``embedding_dim`` sizes a fresh head (128 to distil from SFace)."""
    if name == "resnet50":
        from facegate.models.resnet_face import ResNet50Face

        return ResNet50Face(embedding_dim=embedding_dim)
    if name == "sface":
        from facegate.models.registry import load_state
        from facegate.models.sface import SFace
        from facegate.settings import default_model_dir

        directory = model_dir or default_model_dir()
        card = read_card(directory, "sface")
        model = SFace()
        model.load_state_dict(load_state(model_path(directory, "sface") / card.weights_file))
        return model
    if name == "spiking_resformer":
        from facegate.models.spiking_resformer import SpikingResformer

        return SpikingResformer(embedding_dim=embedding_dim)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
