"""Training on real face chips: every loss moves every backbone; ArcFace learns; exported
ResNet-50 weights load through the serving registry."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from facegate.models.assets import ensure_servable
from facegate.models.card import ModelCard, sha256_file, write_card
from facegate.models.registry import load_network
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import Settings
from facegate.training.backbones import build_backbone
from facegate.training.losses import ArcFaceLoss, DistillationLoss, HybridLoss, TripletLoss
from facegate.training.prepare import ChipMaker

PHOTOS = ["person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2"]
LABELS = torch.tensor([0, 0, 1, 1, 2, 3])


@pytest.fixture(scope="module")
def chips(faces_dir) -> torch.Tensor:
    """The six test photos as 112x112 chips, aligned as `facegate prepare` aligns them."""
    made = ChipMaker(Settings(), "largest").chips([faces_dir / f"{p}.jpg" for p in PHOTOS])
    assert all(isinstance(c, np.ndarray) for c in made)
    return torch.from_numpy(np.stack(made)).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def teacher(chips) -> torch.Tensor:
    sface = FacePipeline(Settings(model_id="sface")).embedder
    return torch.from_numpy(sface.embed(chips.permute(0, 2, 3, 1).byte().numpy()))


#: Unit vectors are at most 2 apart, so with this margin every mined triplet is active
#: whatever a random start makes of six chips (with 0.2, one seeded SFace start already
#: separated them, a zero loss and no step); the margin's own effect is unit-tested.
ALWAYS_ACTIVE_MARGIN = 2.0


def _loss(name: str, dim: int) -> torch.nn.Module:
    if name == "arcface":
        return ArcFaceLoss(dim, num_classes=4, scale=16.0, margin=0.3)
    if name == "triplet":
        return TripletLoss(margin=ALWAYS_ACTIVE_MARGIN)
    if name == "hybrid":
        arcface = ArcFaceLoss(dim, 4, scale=16.0, margin=0.3)
        return HybridLoss(arcface, TripletLoss(ALWAYS_ACTIVE_MARGIN))
    return DistillationLoss()


@pytest.mark.parametrize("backbone", ["resnet50", "sface", "spiking_resformer"])
@pytest.mark.parametrize("loss_name", ["arcface", "triplet", "hybrid", "distillation"])
def test_one_step_of_each_loss_changes_each_backbone(backbone, loss_name, chips, teacher):
    torch.manual_seed(0)
    dim = 128  # SFace's size, so that a ResNet-50 student can be distilled from it
    model = build_backbone(backbone, embedding_dim=dim).train()
    loss_fn = _loss(loss_name, dim)
    params = list(model.parameters()) + list(loss_fn.parameters())
    optimiser = torch.optim.AdamW(params, lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    embeddings = model(chips)
    if loss_name == "distillation":
        loss = loss_fn(embeddings, teacher)
    else:
        loss = loss_fn(embeddings, LABELS)
    assert torch.isfinite(loss) and loss.item() > 0
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)} tensors changed"


def test_thirty_arcface_steps_on_a_tiny_identity_set_lower_the_loss(chips):
    torch.manual_seed(0)
    model = build_backbone("sface").train()
    loss_fn = ArcFaceLoss(128, num_classes=4, scale=16.0, margin=0.3)
    optimiser = torch.optim.AdamW(
        [*model.parameters(), *loss_fn.parameters()], lr=3e-4, weight_decay=0.0
    )
    losses = []
    for _ in range(30):
        loss = loss_fn(model(chips), LABELS)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("backbone", ["resnet50", "spiking_resformer"])
def test_trained_weights_serve_through_the_registry(backbone, tmp_path, faces_dir):
    """A trained backbone's weights + card load by model id and embed a photo."""
    model = build_backbone(backbone).eval()
    folder = tmp_path / "resnet-test"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    write_card(
        tmp_path,
        ModelCard(
            model_id="resnet-test",
            version="test",
            architecture=backbone,
            embedding_dim=512,
            input_size=112,
            template="arcface_112",
            pixel_format="RGB uint8 0..255",
            pixel_normalisation="(x - 127.5) / 128, inside the network",
            weights_file="model.safetensors",
            weights_sha256=sha256_file(folder / "model.safetensors"),
            threshold=0.3,
        ),
    )
    network, card = load_network(tmp_path, "resnet-test")
    assert card.embedding_dim == 512
    # A card written by hand has no ONNX graph: the registry's torch module serves it.
    # MTCNN: the detector that runs on torch too, so that only the embedder's runtime differs.
    settings = Settings(model_dir=tmp_path, model_id="resnet-test", detector="mtcnn")
    pipeline = FacePipeline(settings.model_copy(update={"runtime": "torch"}))
    vector = pipeline.process(faces_dir / "person_a_1.jpg").primary.vector
    assert vector.shape == (512,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    # Exported (as 'facegate export' does), it serves on ONNX Runtime, batch axis dynamic.
    exported = ensure_servable(tmp_path, card)
    assert exported.onnx["weights_sha256"] == card.weights_sha256
    served = FacePipeline(settings)
    photos = [faces_dir / f"person_{p}.jpg" for p in ("a_1", "a_2", "b_1")]
    on_onnx = [r.primary.vector for r in served.process_many(photos)]  # type: ignore[union-attr]
    on_torch = [r.primary.vector for r in pipeline.process_many(photos)]  # type: ignore[union-attr]
    assert float(on_onnx[0] @ vector) > 0.9999
    assert min(float(a @ b) for a, b in zip(on_onnx, on_torch, strict=True)) > 0.9999
    with torch.inference_mode():
        again = F.normalize(network(torch.zeros(1, 3, 112, 112)), dim=1)
    assert torch.isfinite(again).all()
