"""Export: a training checkpoint becomes a served model (weights + model card).

The card's threshold is the last validation's k-fold threshold unless one is given; calibrate
it properly afterwards with ``facegate calibrate --model ID`` on identity-disjoint data. The
exported id is then served like any other (``FACEGATE_MODEL_ID``, the ``ModelId`` parameter),
and galleries built with it refuse other models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from facegate.models.assets import ensure_servable
from facegate.models.card import ModelCard, write_card
from facegate.models.registry import save_weights

ARCHITECTURES = {
    "resnet50": "resnet50",
    "sface": "sface",
    "spiking_resformer": "spiking_resformer",
}


def last_validation_threshold(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    thresholds = [
        json.loads(line).get("val_threshold") for line in path.read_text().splitlines() if line
    ]
    found = [t for t in thresholds if t is not None]
    return float(found[-1]) if found else None


def export_checkpoint(
    checkpoint: Path, model_dir: Path, model_id: str, threshold: float | None = None
) -> ModelCard:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = state["config"]
    architecture = ARCHITECTURES.get(config["backbone"])
    if architecture is None:
        raise ValueError(f"backbone {config['backbone']!r} cannot be served yet")
    threshold = threshold if threshold is not None else last_validation_threshold(checkpoint.parent)
    if threshold is None:
        raise ValueError("no validation threshold in the run: pass --threshold")
    weights = save_weights(model_dir, model_id, state["model"], architecture)
    card = ModelCard.for_weights(
        weights,
        model_id=model_id,
        version=f"epoch{state['epoch']}-step{state['step']}",
        architecture=architecture,
        embedding_dim=int(config["embedding_dim"]),
        threshold=float(threshold),
        source={"checkpoint": str(checkpoint), "training": config},
        calibration={"provisional": "threshold from training validation; run facegate calibrate"},
    )
    write_card(model_dir, card)
    return ensure_servable(model_dir, card)
