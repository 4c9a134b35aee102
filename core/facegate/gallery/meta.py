"""What a gallery file says about itself: ``GalleryMeta``, JSON in the Parquet footer.

The model id and weights hash (embeddings of different models must never be compared), the
embedding dim, the metric and the threshold the gallery was calibrated for travel with the
file, under ``b"facegate"`` in the Parquet (and Arrow) schema metadata, so that a reader can
refuse misuse before a single row is read. Torch-free.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from facegate.common import ID_PATTERN, utc_now
from facegate.errors import ValidationError

#: Bump when a reader of the previous version could misread a new file.
SCHEMA_VERSION = 2
#: Key of the JSON document in the Parquet (and Arrow) schema metadata.
METADATA_KEY = b"facegate"
#: The only metric the format knows: embeddings are unit vectors, similarity is a dot product.
METRIC = "cosine"

#: Keys added within :data:`SCHEMA_VERSION`: a file written before them lacks them and reads
#: with their default.
ADDED_IN_VERSION = frozenset({"detector"})

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _parse_utc(value: str) -> datetime:
    """Parse ISO-8601 and insist on UTC: local times make galleries unorderable across hosts."""
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    parsed = datetime.fromisoformat(text)
    offset = parsed.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise ValueError(f"created_at must be UTC, got {value!r}")
    return parsed


@dataclass(frozen=True)
class GalleryMeta:
    """What a gallery file says about itself; stored as JSON under :data:`METADATA_KEY`.

    ``row_count`` is written by :func:`build_gallery_table` and checked on read, so a
    truncated or spliced file is refused instead of silently searching fewer subjects.
    ``threshold`` is the cosine similarity at or above which two faces are the same person,
    for this model; search uses it when the caller gives none.
    """

    model_id: str
    weights_sha256: str
    dim: int
    threshold: float
    metric: str = METRIC
    created_at: str = field(default_factory=utc_now)
    row_count: int = 0
    schema_version: int = SCHEMA_VERSION
    #: Whose subjects the rows are, for erasure: None for the gallery's own (an erasure in the
    #: gallery), else the scope the rows were re-embedded from (``"api"`` for the enrolled
    #: subjects, ``"gallery:<source>"``, ``"collection:<c>"`` for a collection's export), so
    #: that erasing a person there reaches this copy too.
    subject_scope: str | None = None
    #: The face detector whose aligned crops the rows embed (``FACEGATE_DETECTOR``): each
    #: detector crops a little differently, and the threshold was calibrated on its crops.
    #: None: not recorded (galleries written before it was) or rows from several detectors.
    detector: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_id, str) or not self.model_id:
            raise ValidationError("gallery metadata: model_id must be a non-empty string")
        sha = self.weights_sha256
        if not isinstance(sha, str) or not _SHA256_RE.match(sha.lower()):
            raise ValidationError(
                "gallery metadata: weights_sha256 must be 64 hex characters",
                detail=repr(sha),
            )
        object.__setattr__(self, "weights_sha256", sha.lower())
        if not is_int(self.dim) or self.dim <= 0:
            raise ValidationError(f"gallery metadata: dim must be a positive int, got {self.dim!r}")
        if not is_int(self.row_count) or self.row_count < 0:
            raise ValidationError(
                f"gallery metadata: row_count must be a non-negative int, got {self.row_count!r}"
            )
        if not is_int(self.schema_version) or self.schema_version != SCHEMA_VERSION:
            raise ValidationError(
                f"unsupported gallery schema_version {self.schema_version!r} "
                f"(this reader understands {SCHEMA_VERSION})"
            )
        scope = self.subject_scope
        if scope is not None and not (
            scope == "api"
            or (
                isinstance(scope, str)
                and scope.partition(":")[0] in ("gallery", "collection")
                and ID_PATTERN.match(scope.partition(":")[2])
            )
        ):
            raise ValidationError(
                "gallery metadata: subject_scope must be 'api', 'gallery:<name>' or "
                "'collection:<name>'",
                detail=repr(scope),
            )
        if self.detector is not None and not (
            isinstance(self.detector, str) and ID_PATTERN.match(self.detector)
        ):
            raise ValidationError(
                "gallery metadata: detector must be a detector's name or null",
                detail=repr(self.detector),
            )
        if self.metric != METRIC:
            raise ValidationError(
                f"gallery metadata: metric must be {METRIC!r}, got {self.metric!r}"
            )
        threshold = self.threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
            or not -1.0 <= threshold <= 1.0
        ):
            raise ValidationError(
                f"gallery metadata: threshold must be a cosine similarity in [-1, 1], "
                f"got {threshold!r}"
            )
        object.__setattr__(self, "threshold", float(threshold))
        try:
            _parse_utc(self.created_at)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValidationError(
                "gallery metadata: created_at must be an ISO-8601 UTC timestamp",
                detail=repr(self.created_at),
            ) from exc

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> GalleryMeta:
        """Parse and validate; unknown keys are ignored so that additive changes need no bump."""
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValidationError("gallery metadata is not valid JSON", detail=str(exc)) from exc
        if not isinstance(doc, dict):
            raise ValidationError("gallery metadata must be a JSON object")
        # Version first: a future file may legitimately lack today's required keys.
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION or not is_int(version):
            raise ValidationError(
                f"unsupported gallery schema_version {version!r} "
                f"(this reader understands {SCHEMA_VERSION})"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - ADDED_IN_VERSION if n not in doc)
        if missing:
            raise ValidationError(f"gallery metadata is missing {', '.join(missing)}")
        return cls(**{k: v for k, v in doc.items() if k in names})

    def to_schema_metadata(self) -> dict[bytes, bytes]:
        return {METADATA_KEY: self.to_json().encode("utf-8")}


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is no dim or count)."""
    return isinstance(value, int) and not isinstance(value, bool)
