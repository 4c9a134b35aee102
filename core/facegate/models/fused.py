"""Fused models: several installed networks behaving as one model id. Torch-free.

A fused card names its parts and the sha256 of each part's weights. Its own
``weights_sha256`` is a digest of those, so a gallery built with ``sface+dlib`` records
exactly which weights made it, and replacing either part's weights makes the fused card
stale: loading it then refuses rather than mixing embeddings from different networks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facegate.errors import ModelNotFoundError
from facegate.models.card import ModelCard, read_card, write_card

FUSED = "fused"
DEFAULT_FUSED_ID = "sface+dlib"
DEFAULT_PARTS = ("sface", "dlib-resnet")


def parts_digest(parts: dict[str, str]) -> str:
    """sha256 over ``id:weights_sha256`` lines, in the fused model's order."""
    text = "\n".join(f"{model_id}:{sha}" for model_id, sha in parts.items())
    return hashlib.sha256(text.encode()).hexdigest()


def fused_card(
    model_dir: Path,
    model_id: str,
    parts: Sequence[str],
    *,
    threshold: float,
    calibration: dict[str, Any] | None = None,
    calibrations: dict[str, dict[str, Any]] | None = None,
) -> ModelCard:
    """The card of a fused model over ``parts`` as installed now (their cards must exist)."""
    cards = [read_card(model_dir, part) for part in parts]
    shas = {c.model_id: c.weights_sha256 for c in cards}
    return ModelCard(
        model_id=model_id,
        version="+".join(f"{c.model_id}@{c.version}" for c in cards),
        architecture=FUSED,
        embedding_dim=sum(c.embedding_dim for c in cards),
        input_size=max(c.input_size for c in cards),
        template=FUSED,
        pixel_format=cards[0].pixel_format,
        pixel_normalisation="each part normalises its own input",
        weights_file="",
        weights_sha256=parts_digest(shas),
        threshold=threshold,
        source={"parts": list(parts), "part_sha256": shas},
        calibration=calibration or {},
        calibrations=calibrations or {},
        license="; ".join(f"{c.model_id}: {c.license}" for c in cards),
    )


def fused_parts(model_dir: Path, card: ModelCard) -> list[str]:
    """The part ids of a fused card, after checking each part is the one it was built on."""
    recorded: dict[str, str] = card.source.get("part_sha256", {})
    parts = list(card.source.get("parts", []))
    if not parts or set(parts) != set(recorded):
        raise ModelNotFoundError(f"fused model {card.model_id!r} has no valid list of parts")
    for part in parts:
        installed = read_card(model_dir, part).weights_sha256
        if installed != recorded[part]:
            raise ModelNotFoundError(
                f"fused model {card.model_id!r} was built on other weights of {part!r}; "
                "run 'facegate setup' to rebuild it"
            )
    return parts


def install_fused(
    model_dir: Path,
    calibration: dict[str, Any] | None,
    *,
    model_id: str = DEFAULT_FUSED_ID,
    parts: Sequence[str] = DEFAULT_PARTS,
    provisional_threshold: float = 0.3,
    calibrations: dict[str, dict[str, Any]] | None = None,
) -> ModelCard:
    """Write (or refresh) the fused card; its threshold comes from its calibration record,
    else a provisional one marked as such in the card."""
    if calibration is not None:
        threshold = float(calibration["threshold"])
    else:
        threshold = provisional_threshold
        calibration = {"provisional": "not calibrated yet: run 'facegate calibrate'"}
    card = fused_card(
        model_dir,
        model_id,
        parts,
        threshold=threshold,
        calibration=calibration,
        calibrations=calibrations,
    )
    write_card(model_dir, card)
    return card
