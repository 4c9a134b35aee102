"""Subject and face records, their DynamoDB items and listing cursors. Torch-free.

The item layout: one partition per subject of a collection, ``pk=SUBJECT#<collection>#<id>``
(ids never hold ``#``), with a ``META`` item, whose ``kind`` is ``SUBJECT#<collection>`` (the
sparse ``subjects`` index lists one collection), and one ``FACE#<face_id>`` item per face. It
is spelled here once; values are encoded by :mod:`facegate.storage.dynamo`. Tables written
before collections keyed subjects ``SUBJECT#<id>`` with ``kind=SUBJECT``
(:data:`LEGACY_SUBJECT_KIND`): :mod:`facegate.storage.migrate` moves them into the default
collection. Embeddings are stored as
little-endian float32 bytes, so they round-trip bit for bit.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facegate.common import parse_json, validate_id
from facegate.errors import StorageError, ValidationError
from facegate.storage.dynamo import to_attributes

LEGACY_SUBJECT_KIND = "SUBJECT"
META_SK = "META"
FACE_SK = "FACE#"
SUBJECT_PK = "SUBJECT#"
#: The sparse index of face items (only they carry its keys): one partition per collection
#: and model, sorted by enrolment time (:mod:`facegate.storage.face_index`).
FACES_INDEX = "faces"
FACES_PK = "faces_pk"
FACES_SK = "faces_sk"
#: Display metadata is for people, not a document store.
MAX_METADATA_ENTRIES = 32
MAX_METADATA_CHARS = 1024
_CURSOR_KEYS = frozenset({"pk", "sk", "kind", "subject_id"})


@dataclass(frozen=True)
class Subject:
    """An enrolled person. Timestamps are ISO-8601 UTC (``...Z``); ``metadata`` is for display."""

    subject_id: str
    model_id: str
    face_count: int
    created_at: str
    updated_at: str
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "subject_id": self.subject_id,
            "model_id": self.model_id,
            "face_count": self.face_count,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class StoredFace:
    """One enrolled face: ``embedding`` is ``(D,) float32``, L2-normalised.

    ``bbox`` is ``(x1, y1, x2, y2)`` in the stored photo's pixels; ``image_key`` is that photo's
    S3 key. ``model_id``, ``weights_sha256`` and ``created_at`` are stamped by
    :meth:`SubjectStore.put_faces` and always set on faces read back.
    """

    face_id: str
    embedding: np.ndarray = field(repr=False, compare=False)
    image_key: str
    bbox: tuple[float, float, float, float] | None = None
    det_score: float | None = None
    model_id: str | None = None
    weights_sha256: str | None = None
    created_at: str | None = None


def validate_metadata(metadata: Any) -> dict[str, str]:
    """Display metadata: at most :data:`MAX_METADATA_ENTRIES` short string pairs."""
    if not isinstance(metadata, Mapping):
        raise ValidationError("metadata must be a mapping of strings to strings")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise ValidationError(f"metadata has more than {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise ValidationError("metadata must map non-empty strings to strings")
        if len(key) + len(value) > MAX_METADATA_CHARS:
            raise ValidationError(f"metadata entry {key[:40]!r} is too long")
    return dict(metadata)


# --------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------


def subject_kind(collection: str) -> str:
    """The ``kind`` of a collection's META items (the ``subjects`` index's partition)."""
    return f"{SUBJECT_PK}{validate_id(collection, 'collection')}"


def subject_pk(subject_id: str, collection: str) -> str:
    """``SUBJECT#<collection>#<subject_id>``."""
    return f"{subject_kind(collection)}#{validate_id(subject_id)}"


def subject_key(subject_id: str, collection: str, sk: str = META_SK) -> dict[str, Any]:
    """The primary key of one of the subject's items (its ``META`` item by default)."""
    return to_attributes({"pk": subject_pk(subject_id, collection), "sk": sk})


def faces_partition(collection: str, model_id: str) -> str:
    """The index partition of a collection's faces of one model."""
    return f"FACES#{validate_id(collection, 'collection')}#{model_id}"


def faces_index_keys(
    collection: str, subject_id: str, face_id: str, model_id: str, created_at: str
) -> dict[str, str]:
    """The index's attributes of a face item (plain values)."""
    return {
        FACES_PK: faces_partition(collection, model_id),
        FACES_SK: f"{created_at}#{subject_id}#{face_id}",
    }


def face_item(
    subject_id: str, collection: str, face: StoredFace, embedding: np.ndarray
) -> dict[str, Any]:
    """The ``FACE#`` item of a stamped face; ``embedding`` is its checked ``(D,)`` vector."""
    return to_attributes(
        {
            "pk": subject_pk(subject_id, collection),
            "sk": FACE_SK + face.face_id,
            "face_id": face.face_id,
            "embedding": embedding.astype("<f4").tobytes(),
            "dim": int(embedding.shape[0]),
            "model_id": str(face.model_id),
            "weights_sha256": str(face.weights_sha256),
            "image_key": face.image_key,
            "created_at": str(face.created_at),
            "bbox": None if face.bbox is None else [float(v) for v in face.bbox],
            "det_score": None if face.det_score is None else float(face.det_score),
            **faces_index_keys(
                collection, subject_id, face.face_id, str(face.model_id), str(face.created_at)
            ),
        }
    )


def decode_embedding(item: Mapping[str, Any]) -> np.ndarray:
    """``(D,) float32`` from a decoded face item; a length that disagrees with ``dim`` is a
    :class:`StorageError` (a corrupt item must not become a wrong vector)."""
    dim = int(item["dim"])
    raw = item["embedding"]
    if len(raw) != 4 * dim:
        raise StorageError(f"stored embedding has {len(raw)} bytes, expected {4 * dim}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def face_from_item(item: Mapping[str, Any]) -> StoredFace:
    """A decoded (:func:`~facegate.storage.dynamo.from_attributes`) ``FACE#`` item."""
    bbox = item.get("bbox")
    score = item.get("det_score")
    return StoredFace(
        face_id=item["face_id"],
        embedding=decode_embedding(item),
        image_key=item["image_key"],
        bbox=(float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])) if bbox else None,
        det_score=float(score) if score is not None else None,
        model_id=item["model_id"],
        weights_sha256=item["weights_sha256"],
        created_at=item["created_at"],
    )


def subject_from_item(item: Mapping[str, Any]) -> Subject:
    """A decoded ``META`` item."""
    return Subject(
        subject_id=item["subject_id"],
        model_id=item["model_id"],
        face_count=int(item["face_count"]),
        created_at=item["created_at"],
        updated_at=item["updated_at"],
        metadata=dict(item.get("metadata", {})),
    )


# --------------------------------------------------------------------------------------
# Listing cursors
# --------------------------------------------------------------------------------------


def encode_cursor(key: Mapping[str, Any]) -> str:
    """DynamoDB's LastEvaluatedKey (wire format) as an opaque, URL-safe string."""
    raw = json.dumps(key, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Inverse of :func:`encode_cursor`, refusing anything that is not a key of the index.

    The cursor comes from a caller: checking its shape keeps a forged one from reaching
    DynamoDB as anything but a start key of the ``subjects`` index. It stays DynamoDB's own
    wire format (four string attributes), so cursors handed out earlier keep working.
    """
    return decode_start_key(cursor, _CURSOR_KEYS)


def decode_start_key(cursor: str, names: frozenset[str]) -> dict[str, Any]:
    """The start key a cursor of :func:`encode_cursor` carries, when it is exactly the string
    attributes ``names``; else ``invalid cursor``. :func:`~facegate.common.parse_json` bounds
    its nesting (JSON nested past Python's recursion limit would escape as a
    ``RecursionError``); the caller checks what its own keys must hold."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key: Any = parse_json(base64.urlsafe_b64decode(padded.encode("ascii")), "cursor")
    except (AttributeError, TypeError, ValueError, binascii.Error, ValidationError) as exc:
        raise ValidationError("invalid cursor") from exc
    valid = (
        isinstance(key, dict)
        and set(key) == names
        and all(isinstance(v, dict) and list(v) == ["S"] for v in key.values())
        and all(isinstance(v["S"], str) for v in key.values())
    )
    if not valid:
        raise ValidationError("invalid cursor")
    return dict(key)
