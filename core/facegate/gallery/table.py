"""The gallery table: its one column schema, building and validating tables, embeddings view.

Embeddings are stored as ``fixed_size_list<float32>[dim]``, not a variable list: every row
has the same length by construction, Parquet stores no per-row offsets, and the flat values
buffer maps onto an ``(N, dim)`` NumPy array without copying (:func:`gallery_embeddings`).
Torch-free; no I/O (``facegate.gallery.format`` reads and writes files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from facegate.common import parse_instant
from facegate.errors import ModelMismatchError, ValidationError
from facegate.gallery.meta import METADATA_KEY, SCHEMA_VERSION, GalleryMeta, is_int
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

#: How far ``||e||`` may stray from 1. float32 normalisation lands within ~1e-6; 1e-3 only
#: catches vectors that were never normalised (or were normalised in another dtype and
#: then quantised), without rejecting honest rounding.
NORM_TOLERANCE = 1e-3


def source_time() -> pa.TimestampType[Any, Any]:
    """The ``source_at`` column's type: exact microseconds, UTC (a tombstone's time has
    microseconds too)."""
    return pa.timestamp("us", tz="UTC")


def _float_list(size: int) -> pa.DataType:
    # The child is named "element" because that is what Parquet's list convention calls it;
    # pyarrow renames it on write, so using it here keeps written and read schemas equal.
    return pa.list_(pa.field("element", pa.float32(), nullable=False), size)


def gallery_schema(dim: int, meta: GalleryMeta | None = None) -> pa.Schema:
    """The one definition of a gallery's columns; with ``meta``, its footer metadata too.

    ``bbox`` is ``(x1, y1, x2, y2)`` in original-image pixels. ``source_at`` is when the
    photo the row was embedded from was uploaded (the S3 notification's event time, an
    enrolment's time), not when the row was built: an erasure drops every row whose photo
    predates it, so an embedding job that was in flight during the erasure, or a message
    redriven from a dead-letter queue weeks later, can never bring the person back, while a
    photo uploaded after the erasure is kept. Only ``subject_id``, ``image_key``,
    ``embedding`` and ``source_at`` are non-nullable: a row without them is useless, while a
    face enrolled from a pre-cropped chip legitimately has no box or detector score.
    """
    if not is_int(dim) or dim <= 0:
        raise ValidationError(f"embedding dim must be a positive int, got {dim!r}")
    if meta is not None and meta.dim != dim:
        raise ModelMismatchError(f"schema dim {dim} does not match metadata dim {meta.dim}")
    columns: list[pa.Field[Any]] = [
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("face_index", pa.int32()),
        pa.field("bbox", _float_list(4)),
        pa.field("det_score", pa.float32()),
        pa.field("embedding", _float_list(dim), nullable=False),
        pa.field("source_at", source_time(), nullable=False),
    ]
    schema = pa.schema(columns)
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


def string_column(values: Any, name: str, n: int | None = None) -> pa.Array[Any]:
    """A non-null string column (of ``n`` rows when given), or :class:`ValidationError`."""
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
    subject_ids: Sequence[str] | np.ndarray | pa.Array[Any],
    image_keys: Sequence[str] | np.ndarray | pa.Array[Any],
    face_indices: Sequence[int] | np.ndarray,
    bboxes: np.ndarray,
    det_scores: np.ndarray,
    embeddings: np.ndarray,
    meta: GalleryMeta,
    source_times: Sequence[str | datetime] | pa.Array[Any] | pa.ChunkedArray[Any] | None = None,
) -> pa.Table:
    """Assemble a validated gallery table from columnar inputs.

    Shapes: ``subject_ids``, ``image_keys``, ``face_indices`` and ``det_scores`` are
    ``(N,)``; ``bboxes`` is ``(N, 4)``; ``embeddings`` is ``(N, meta.dim)`` and must be
    finite and L2-normalised. ``meta.row_count`` is replaced by ``N``: the caller cannot get
    it wrong. ``source_times`` ``(N,)`` are the rows' upload times (ISO-8601 UTC strings,
    aware datetimes or a timestamp array); without them every row dates from
    ``meta.created_at``, right only for a table whose photos were all uploaded when it was
    built. Raises :class:`ValidationError` on bad input and :class:`ModelMismatchError`
    when the embeddings' dim is not ``meta.dim``.
    """
    emb = validate_embeddings(embeddings, dim=meta.dim)
    n = emb.shape[0]
    subjects = string_column(subject_ids, "subject_ids", n)
    keys = string_column(image_keys, "image_keys", n)
    if not all(subjects.to_pylist()):  # nulls were refused: a falsy id is ""
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
        source_column(meta.created_at if source_times is None else source_times, n),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def source_column(
    values: str | datetime | Sequence[str | datetime] | pa.Array[Any] | pa.ChunkedArray[Any],
    n: int,
) -> pa.Array[Any]:
    """``n`` upload times as a :func:`source_time` array: one time for every row, or one per
    row. Every time must be UTC (:func:`~facegate.common.parse_instant`): a naive or local
    time would compare wrongly with a tombstone's."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if not pa.types.is_timestamp(values.type) or values.type.tz not in ("UTC", "+00:00"):
            raise ValidationError(f"source_times must be UTC timestamps, got {values.type}")
        arr = values.cast(source_time())
    else:
        items = [values] * n if isinstance(values, str | datetime) else list(values)
        arr = pa.array([parse_instant(v, "source time") for v in items], type=source_time())
    if len(arr) != n:
        raise ValidationError(f"source_times has {len(arr)} rows, expected {n}")
    if arr.null_count:
        raise ValidationError("source_times must not contain nulls")
    return arr


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
    parts: list[np.ndarray] = []
    for chunk in chunks:
        flat = cast("pa.FixedSizeListArray[Any]", chunk).flatten()
        if flat.null_count:
            raise ValidationError("embedding values contain nulls")
        parts.append(flat.to_numpy(zero_copy_only=True).reshape(-1, dim))
    if not parts:
        return np.empty((0, dim), dtype=np.float32)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)
