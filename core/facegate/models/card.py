"""Model cards: what a weights file is, where it came from, and how to use it. Torch-free.

A model directory holds ``<model_dir>/<model_id>/card.json`` beside its weights. Every
gallery and every API answer records ``model_id`` and ``weights_sha256`` from the card, so
embeddings from different models are never compared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from facegate.errors import ModelNotFoundError, ValidationError

CARD_FILE = "card.json"
#: What every network that has a weights file takes: RGB bytes, normalised inside the model.
PIXEL_FORMAT = "RGB uint8 0..255"


@dataclass(frozen=True)
class NetworkInput:
    """What one architecture takes: its chip size, the template its chips are aligned to
    (``facegate.models.templates``) and how its pixels are normalised."""

    input_size: int
    template: str
    pixel_normalisation: str


_ARCFACE_112 = NetworkInput(112, "arcface_112", "(x - 127.5) / 128, inside the network")

#: By architecture (``facegate.models.registry`` builds the networks): the input facts a card
#: records, so that each is written once rather than at every place that makes a card.
NETWORK_INPUTS: dict[str, NetworkInput] = {
    "sface": _ARCFACE_112,
    "resnet50": _ARCFACE_112,
    "spiking_resformer": _ARCFACE_112,
    "dlib_resnet": NetworkInput(
        150, "dlib_150", "(x - [122.782, 117.001, 104.298]) / 256, inside the network"
    ),
    "inception_resnet_v1": NetworkInput(
        160, "arcface_160", "(x - 127.5) / 128, applied by the registry wrapper"
    ),
}


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to serve a model and to trust its numbers."""

    model_id: str
    version: str
    architecture: str
    embedding_dim: int
    input_size: int
    template: str
    pixel_format: str
    pixel_normalisation: str
    weights_file: str
    weights_sha256: str
    threshold: float
    source: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    #: The network's ONNX graph beside its weights (``facegate.models.onnx_export``): file,
    #: sha256, opset, the weights it was traced from. Empty: not exported (torch only).
    onnx: dict[str, Any] = field(default_factory=dict)
    #: The committed calibration record of each detector it was calibrated with, by detector
    #: name (``facegate.settings.DETECTORS``): a model scores YuNet's crops and MTCNN's
    #: differently enough to need a threshold for each. ``threshold`` and ``calibration`` are
    #: the default detector's; :meth:`for_detector` picks another's. Empty: one calibration.
    calibrations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @property
    def far_thresholds(self) -> dict[str, float]:
        """Calibrated thresholds keyed by target false accept rate (``"0.001"`` ...)."""
        table = self.calibration.get("far_thresholds", {})
        return {str(k): float(v) for k, v in table.items()}

    def threshold_at_far(self, far: float) -> float:
        """The calibrated threshold for ``far``; only calibrated FARs are answered, because
        a threshold interpolated between them would claim a FAR nobody measured."""
        table = self.far_thresholds
        key = f"{far:g}"
        if key not in table:
            known = ", ".join(sorted(table, key=float)) or "none"
            raise ValidationError(
                f"model {self.model_id!r} has no threshold calibrated for FAR {key}; "
                f"calibrated FARs: {known}"
            )
        return table[key]

    def for_detector(self, detector: str) -> ModelCard:
        """This card deciding at the threshold calibrated on ``detector``'s crops; itself
        where it has no calibration for that detector (its record names the one it had)."""
        record = self.calibrations.get(detector)
        if record is None or record == self.calibration:
            return self
        return replace(self, threshold=float(record["threshold"]), calibration=record)

    @classmethod
    def for_weights(
        cls,
        weights: Path,
        *,
        model_id: str,
        version: str,
        architecture: str,
        embedding_dim: int,
        threshold: float,
        source: dict[str, Any],
        calibration: dict[str, Any],
        calibrations: dict[str, dict[str, Any]] | None = None,
        license: str = "",
    ) -> ModelCard:
        """The card of a weights file just put in place: file name and sha256 are read off
        the file, the input facts come from :data:`NETWORK_INPUTS` for ``architecture``."""
        network = NETWORK_INPUTS.get(architecture)
        if network is None:
            raise ValidationError(f"no input facts for architecture {architecture!r}")
        return cls(
            model_id=model_id,
            version=version,
            architecture=architecture,
            embedding_dim=int(embedding_dim),
            input_size=network.input_size,
            template=network.template,
            pixel_format=PIXEL_FORMAT,
            pixel_normalisation=network.pixel_normalisation,
            weights_file=weights.name,
            weights_sha256=sha256_file(weights),
            threshold=float(threshold),
            source=source,
            calibration=calibration,
            calibrations=calibrations or {},
            license=license,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def resolve_threshold(
    card: ModelCard, threshold: float | None = None, far: float | None = None
) -> float:
    """A raw threshold, else the card's threshold for a target FAR, else the card's default."""
    if threshold is not None and far is not None:
        raise ValidationError("give a threshold or a target FAR, not both")
    if threshold is not None:
        if not -1.0 <= threshold <= 1.0:
            raise ValidationError("threshold must be a cosine similarity between -1 and 1")
        return float(threshold)
    if far is not None:
        return card.threshold_at_far(far)
    return card.threshold


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_path(model_dir: Path, model_id: str) -> Path:
    return Path(model_dir) / model_id


def read_card(model_dir: Path, model_id: str) -> ModelCard:
    """The card of ``model_id``; ``ModelNotFoundError`` names the set-up step when absent."""
    path = model_path(model_dir, model_id) / CARD_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"model {model_id!r} not found in {model_dir} (no {CARD_FILE}); run "
            f"'facegate setup' or set FACEGATE_MODEL_DIR"
        )
    return ModelCard.from_dict(json.loads(path.read_text()))


def write_card(model_dir: Path, card: ModelCard) -> Path:
    path = model_path(model_dir, card.model_id) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(card.to_json())
    tmp.replace(path)
    return path


def list_cards(model_dir: Path) -> list[ModelCard]:
    root = Path(model_dir)
    if not root.is_dir():
        return []
    return [read_card(root, p.parent.name) for p in sorted(root.glob(f"*/{CARD_FILE}"))]
