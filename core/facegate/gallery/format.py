"""The Parquet gallery format: one schema definition, versioned, torch-free.

A gallery is the unit that batch enrolment writes and search reads, possibly years and
model upgrades apart. So the file carries everything needed to refuse misuse on its own:
the model id and weights hash (embeddings of different models must never be compared), the
embedding dim, the metric and the threshold the gallery was calibrated for. That metadata
lives in the Parquet footer under ``b"facegate"`` so that it can be checked before a single
row is read.

Embeddings are stored as ``fixed_size_list<float32>[dim]``, not a variable list: every row
has the same length by construction, Parquet stores no per-row offsets, and the flat values
buffer maps onto an ``(N, dim)`` NumPy array without copying (:func:`gallery_embeddings`).

This module must never import torch, directly or indirectly: it runs in the light search
functions.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, BinaryIO, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facegate.errors import (
    FaceGateError,
    ModelMismatchError,
    StorageError,
    ValidationError,
)

#: Bump when a reader of the previous version could misread a new file.
SCHEMA_VERSION = 1
#: Key of the JSON document in the Parquet (and Arrow) schema metadata.
METADATA_KEY = b"facegate"
#: The only metric the format knows: embeddings are unit vectors, similarity is a dot product.
METRIC = "cosine"
#: 65536 rows of 512-d float32 is 128 MiB of embeddings per row group before compression:
#: big enough for efficient scans, small enough that streaming search holds one at a time.
DEFAULT_ROW_GROUP_SIZE = 65536
#: How far ``||e||`` may stray from 1. float32 normalisation lands within ~1e-6; 1e-3 only
#: catches vectors that were never normalised (or were normalised in another dtype and
#: then quantised), without rejecting honest rounding.
NORM_TOLERANCE = 1e-3

Source = Union[str, "os.PathLike[str]", BinaryIO, pa.NativeFile]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_utc(value: str) -> datetime:
    """Parse ISO-8601 and insist on UTC: local times make galleries unorderable across hosts."""
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    parsed = datetime.fromisoformat(text)
    if parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:
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
    created_at: str = field(default_factory=_utc_now)
    row_count: int = 0
    schema_version: int = SCHEMA_VERSION

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
        if not _is_int(self.dim) or self.dim <= 0:
            raise ValidationError(f"gallery metadata: dim must be a positive int, got {self.dim!r}")
        if not _is_int(self.row_count) or self.row_count < 0:
            raise ValidationError(
                f"gallery metadata: row_count must be a non-negative int, got {self.row_count!r}"
            )
        if not _is_int(self.schema_version) or self.schema_version != SCHEMA_VERSION:
            raise ValidationError(
                f"unsupported gallery schema_version {self.schema_version!r} "
                f"(this reader understands {SCHEMA_VERSION})"
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
        if version != SCHEMA_VERSION or not _is_int(version):
            raise ValidationError(
                f"unsupported gallery schema_version {version!r} "
                f"(this reader understands {SCHEMA_VERSION})"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in doc)
        if missing:
            raise ValidationError(f"gallery metadata is missing {', '.join(missing)}")
        return cls(**{k: v for k, v in doc.items() if k in names})

    def to_schema_metadata(self) -> dict[bytes, bytes]:
        return {METADATA_KEY: self.to_json().encode("utf-8")}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------


def _float_list(size: int) -> pa.DataType:
    # The child is named "element" because that is what Parquet's list convention calls it;
    # pyarrow renames it on write, so using it here keeps written and read schemas equal.
    return pa.list_(pa.field("element", pa.float32(), nullable=False), size)


def gallery_schema(dim: int, meta: GalleryMeta | None = None) -> pa.Schema:
    """The one definition of a gallery's columns; with ``meta``, its footer metadata too.

    ``bbox`` is ``(x1, y1, x2, y2)`` in original-image pixels. Only ``subject_id``,
    ``image_key`` and ``embedding`` are non-nullable: a row without them is useless, while a
    face enrolled from a pre-cropped chip legitimately has no box or detector score.
    """
    if not _is_int(dim) or dim <= 0:
        raise ValidationError(f"embedding dim must be a positive int, got {dim!r}")
    if meta is not None and meta.dim != dim:
        raise ModelMismatchError(f"schema dim {dim} does not match metadata dim {meta.dim}")
    schema = pa.schema(
        [
            pa.field("subject_id", pa.string(), nullable=False),
            pa.field("image_key", pa.string(), nullable=False),
            pa.field("face_index", pa.int32()),
            pa.field("bbox", _float_list(4)),
            pa.field("det_score", pa.float32()),
            pa.field("embedding", _float_list(dim), nullable=False),
        ]
    )
    return schema.with_metadata(meta.to_schema_metadata()) if meta is not None else schema


def gallery_meta_from_schema(
    schema: pa.Schema, expected_model_id: str | None = None
) -> GalleryMeta:
    """Validate a schema (typically a Parquet footer's) and return its metadata.

    Checks, in order: metadata present and valid (:class:`ValidationError`), model id
    (:class:`ModelMismatchError`), then columns and types against :func:`gallery_schema`
    (:class:`ValidationError`). The model check comes before the column check so that a
    gallery of another model with another dim reports the actionable error.
    """
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValidationError("not a FaceGate gallery: no 'facegate' schema metadata")
    meta = GalleryMeta.from_json(raw)
    if expected_model_id is not None and meta.model_id != expected_model_id:
        raise ModelMismatchError(
            f"gallery was built with model {meta.model_id!r}, expected {expected_model_id!r}"
        )
    expected = gallery_schema(meta.dim)
    if not schema.remove_metadata().equals(expected):
        raise ValidationError(
            f"gallery columns do not match the schema of version {SCHEMA_VERSION} (dim {meta.dim})",
            detail=f"expected:\n{expected}\ngot:\n{schema.remove_metadata()}",
        )
    return meta


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def validate_embeddings(
    embeddings: Any, *, dim: int | None = None, what: str = "embeddings"
) -> np.ndarray:
    """Return ``embeddings`` as C-contiguous ``(N, D) float32``, or raise.

    Non-finite values and vectors that are not unit-length are refused rather than fixed:
    they mean a broken pipeline upstream, and renormalising would hide it while producing
    similarities that no threshold was calibrated for. A ``dim`` other than expected is a
    :class:`ModelMismatchError`: that is what a different model looks like.
    """
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise ValidationError(f"{what} must be 2-D (N, D), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or arr.size == 0):
        raise ValidationError(f"{what} must be floating point, got {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise ModelMismatchError(f"{what} have dim {arr.shape[1]}, expected {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.shape[0] == 0:
        return arr
    if arr.shape[1] == 0:
        raise ValidationError(f"{what} have dim 0")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValidationError(
            f"{what} contain non-finite values", detail=f"rows {bad[:10].tolist()}"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        bad = np.flatnonzero(off)
        raise ValidationError(
            f"{what} are not L2-normalised (tolerance {NORM_TOLERANCE})",
            detail=f"rows {bad[:10].tolist()} norms {norms[bad[:10]].round(4).tolist()}",
        )
    return arr


def _string_column(values: Any, name: str, n: int | None = None) -> pa.Array:
    try:
        arr = pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise ValidationError(f"{name} must be strings", detail=str(exc)) from exc
    if arr.null_count:
        raise ValidationError(f"{name} must not contain nulls")
    if n is not None and len(arr) != n:
        raise ValidationError(f"{name} has {len(arr)} rows, expected {n}")
    return arr


def _float_matrix(values: Any, name: str, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.size == 0 and shape[0] == 0:
        arr = arr.reshape(shape)
    if arr.shape != shape:
        raise ValidationError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValidationError(f"{name} contain non-finite values")
    return np.ascontiguousarray(arr)


def build_gallery_table(
    *,
    subject_ids: Sequence[str] | np.ndarray | pa.Array,
    image_keys: Sequence[str] | np.ndarray | pa.Array,
    face_indices: Sequence[int] | np.ndarray,
    bboxes: np.ndarray,
    det_scores: np.ndarray,
    embeddings: np.ndarray,
    meta: GalleryMeta,
) -> pa.Table:
    """Assemble a validated gallery table from columnar inputs.

    Shapes: ``subject_ids``, ``image_keys``, ``face_indices`` and ``det_scores`` are
    ``(N,)``; ``bboxes`` is ``(N, 4)``; ``embeddings`` is ``(N, meta.dim)`` and must be
    finite and L2-normalised. ``meta.row_count`` is replaced by ``N``: the caller cannot get
    it wrong. Raises :class:`ValidationError` on bad input and :class:`ModelMismatchError`
    when the embeddings' dim is not ``meta.dim``.
    """
    emb = validate_embeddings(embeddings, dim=meta.dim)
    n = emb.shape[0]
    subjects = _string_column(subject_ids, "subject_ids", n)
    keys = _string_column(image_keys, "image_keys", n)
    if any(len(s) == 0 for s in subjects.to_pylist()):
        raise ValidationError("subject_ids must not be empty strings")

    faces = np.asarray(face_indices)
    if faces.shape != (n,):
        raise ValidationError(f"face_indices must have shape ({n},), got {faces.shape}")
    if n and not np.issubdtype(faces.dtype, np.integer):
        raise ValidationError(f"face_indices must be integers, got {faces.dtype}")
    if n and (faces.min() < 0 or faces.max() > np.iinfo(np.int32).max):
        raise ValidationError("face_indices must be non-negative int32 values")

    boxes = _float_matrix(bboxes, "bboxes", (n, 4))
    scores = np.asarray(det_scores, dtype=np.float32)
    if scores.shape != (n,):
        raise ValidationError(f"det_scores must have shape ({n},), got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValidationError("det_scores contain non-finite values")

    meta = replace(meta, row_count=n)
    schema = gallery_schema(meta.dim, meta)
    columns = [
        subjects,
        keys,
        pa.array(faces.astype(np.int32, copy=False), type=pa.int32()),
        pa.FixedSizeListArray.from_arrays(
            pa.array(boxes.reshape(-1)), type=schema.field("bbox").type
        ),
        pa.array(scores, type=pa.float32()),
        pa.FixedSizeListArray.from_arrays(
            pa.array(emb.reshape(-1)), type=schema.field("embedding").type
        ),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def validate_gallery_table(
    table: pa.Table, *, expected_model_id: str | None = None, check_norms: bool = True
) -> GalleryMeta:
    """Check a table against its own metadata; return the metadata.

    ``check_norms`` costs one pass over the embeddings; writing pays it (a table may have
    been assembled by hand), reading does not (the writer already did).
    """
    meta = gallery_meta_from_schema(table.schema, expected_model_id)
    if table.num_rows != meta.row_count:
        raise ValidationError(
            f"gallery has {table.num_rows} rows but its metadata says {meta.row_count}"
        )
    emb = gallery_embeddings(table)  # refuses nulls
    if check_norms:
        validate_embeddings(emb, dim=meta.dim)
    for name in ("subject_id", "image_key"):
        if table.column(name).null_count:
            raise ValidationError(f"gallery column {name} contains nulls")
    return meta


# --------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------


def _open_parquet(source: Source) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(source, memory_map=isinstance(source, (str, os.PathLike)))
    except OSError as exc:
        raise StorageError(f"cannot read gallery {source!r}", detail=str(exc)) from exc
    except pa.ArrowException as exc:
        raise ValidationError(f"not a Parquet file: {source!r}", detail=str(exc)) from exc


def write_gallery(
    table: pa.Table, where: Source, *, row_group_size: int = DEFAULT_ROW_GROUP_SIZE
) -> GalleryMeta:
    """Validate ``table`` and write it as zstd-compressed Parquet; return its metadata.

    Dictionary encoding and statistics are limited to the id columns: on float vectors they
    cost write time and footer size and never help a reader.
    """
    if not _is_int(row_group_size) or row_group_size <= 0:
        raise ValidationError(f"row_group_size must be a positive int, got {row_group_size!r}")
    meta = validate_gallery_table(table)
    try:
        pq.write_table(
            table,
            where,
            compression="zstd",
            row_group_size=row_group_size,
            use_dictionary=["subject_id", "image_key"],
            write_statistics=["subject_id", "image_key", "face_index", "det_score"],
        )
    except OSError as exc:
        raise StorageError(f"cannot write gallery {where!r}", detail=str(exc)) from exc
    return meta


def open_gallery(
    source: Source, expected_model_id: str | None = None
) -> tuple[GalleryMeta, pq.ParquetFile]:
    """Open a gallery and check its footer without reading rows; for streaming readers."""
    pf = _open_parquet(source)
    return gallery_meta_from_schema(pf.schema_arrow, expected_model_id), pf


def read_gallery_meta(source: Source, expected_model_id: str | None = None) -> GalleryMeta:
    """Read and check only the footer: cheap enough to call before deciding to load."""
    return open_gallery(source, expected_model_id)[0]


def read_gallery(
    source: Source, expected_model_id: str | None = None
) -> tuple[GalleryMeta, pa.Table]:
    """Read a whole gallery after checking its footer.

    Raises :class:`ModelMismatchError` when ``expected_model_id`` is given and differs,
    :class:`ValidationError` for missing or invalid metadata, an unknown schema version,
    wrong columns, a row count that disagrees with the metadata or null embeddings, and
    :class:`StorageError` when the file cannot be read.
    """
    meta, pf = open_gallery(source, expected_model_id)
    try:
        table = pf.read()
    except OSError as exc:
        raise StorageError(f"cannot read gallery {source!r}", detail=str(exc)) from exc
    except pa.ArrowException as exc:
        raise ValidationError(f"corrupt gallery {source!r}", detail=str(exc)) from exc
    validate_gallery_table(table, check_norms=False)
    return meta, table


def gallery_embeddings(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The ``embedding`` column as ``(N, dim) float32``.

    Zero-copy (a read-only view of Arrow's buffer) when the column is a single chunk, which
    is what :func:`build_gallery_table` and a single-row-group read produce; several chunks
    are concatenated, which copies once. ``flatten()`` rather than ``.values`` so that a
    sliced table yields its own rows, not the parent's.
    """
    column = table.column("embedding")
    typ = column.type
    if not pa.types.is_fixed_size_list(typ) or typ.value_type != pa.float32():
        raise ValidationError(f"embedding column must be fixed_size_list<float32>, got {typ}")
    dim = typ.list_size
    if column.null_count:
        raise ValidationError("embedding column contains nulls")
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        flat = chunk.flatten()
        if flat.null_count:
            raise ValidationError("embedding values contain nulls")
        parts.append(flat.to_numpy(zero_copy_only=True).reshape(-1, dim))
    if not parts:
        return np.empty((0, dim), dtype=np.float32)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------
# Rejects
# --------------------------------------------------------------------------------------


def rejects_schema() -> pa.Schema:
    """Rows a batch job could not enrol: ``reason`` is a :class:`FaceGateError` ``code``.

    Codes are stable, so rejects can be counted and retried by reason; ``detail`` carries the
    human-readable part and may be null.
    """
    return pa.schema(
        [
            pa.field("image_key", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("detail", pa.string(), nullable=True),
        ]
    )


def build_rejects_table(
    image_keys: Sequence[str],
    reasons: Sequence[str],
    details: Sequence[str | None] | None = None,
) -> pa.Table:
    """Columnar rejects: ``image_keys`` and ``reasons`` ``(N,)`` non-null, ``details`` nullable."""
    keys = _string_column(image_keys, "image_keys")
    n = len(keys)
    codes = _string_column(reasons, "reasons", n)
    if any(len(c) == 0 for c in codes.to_pylist()):
        raise ValidationError("reasons must be non-empty error codes")
    if details is None:
        detail_arr = pa.nulls(n, type=pa.string())
    else:
        try:
            detail_arr = pa.array(details, type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise ValidationError("details must be strings or None", detail=str(exc)) from exc
        if len(detail_arr) != n:
            raise ValidationError(f"details has {len(detail_arr)} rows, expected {n}")
    return pa.Table.from_arrays([keys, codes, detail_arr], schema=rejects_schema())


def rejects_from_errors(items: Iterable[tuple[str, FaceGateError]]) -> pa.Table:
    """Rejects from ``(image_key, error)`` pairs, as a batch job collects them."""
    keys: list[str] = []
    reasons: list[str] = []
    details: list[str | None] = []
    for key, error in items:
        keys.append(key)
        reasons.append(error.code)
        details.append(error.detail if error.detail is not None else error.message)
    return build_rejects_table(keys, reasons, details)
