"""Gallery compaction: many part tables -> one gallery, latest rows, deletions applied.

Torch-free: pure table work, no storage (``facegate.storage.galleries`` reads and writes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from facegate.common import parse_instant, utc_now
from facegate.errors import ModelMismatchError, ValidationError
from facegate.gallery.meta import METADATA_KEY, GalleryMeta
from facegate.gallery.table import build_gallery_table, gallery_embeddings, validate_gallery_table
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
else:
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: Helper columns added while compacting; never written.
_ORDER = "__order"


def _micros(instant: datetime) -> int:
    """Exact integer microseconds since the epoch: comparable in NumPy without float rounding."""
    return (instant - _EPOCH) // _MICROSECOND


# --------------------------------------------------------------------------------------
# Compaction of tables (pure)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    table: pa.Table
    meta: GalleryMeta
    created_us: int
    name: str


@dataclass(frozen=True)
class _Counts:
    rows_in: int
    duplicates_dropped: int
    deleted_dropped: int


def compact_tables(
    parts: list[pa.Table],
    *,
    deleted: Mapping[str, str] | None = None,
    expected_model_id: str | None = None,
) -> pa.Table:
    """Merge gallery parts into one gallery table with fresh metadata.

    Every part must be a valid gallery of the same model, weights and dim (and of
    ``expected_model_id`` when given): :class:`ModelMismatchError` otherwise, because
    embeddings of different models must never share a gallery. Of the rows sharing an
    ``(image_key, face_index)``, the one from the most recent part (metadata ``created_at``;
    on a tie the later in ``parts``) is kept: a retry re-embeds the same photo. Rows of a
    subject in ``deleted`` (``subject_id -> erasure time``, ISO-8601 UTC) whose photo was
    uploaded (``source_at``) at or before that time are dropped, whenever their part was
    built. Rows come out sorted by ``subject_id``,
    ``image_key``, ``face_index``; the threshold is the most recent part's (a recalibration
    of the same weights applies to old rows too). :class:`ValidationError` for no parts.
    """
    return _compact(parts, None, deleted, expected_model_id)[0]


def _compact(
    tables: Sequence[pa.Table],
    names: Sequence[str] | None,
    deleted: Mapping[str, str] | None,
    expected_model_id: str | None,
    base: pa.Table | None = None,
) -> tuple[pa.Table, _Counts]:
    """``base``: a compacted gallery the parts are merged onto (an incremental run); its
    rows are older than every part's, whatever its ``created_at``."""
    if not tables:
        raise ValidationError("no gallery parts to compact")
    labels = list(names) if names is not None else [f"part {i}" for i in range(len(tables))]
    parts = _checked_parts(tables, labels, expected_model_id)
    if base is not None:
        merged = _checked_parts([base], ["gallery.parquet"], expected_model_id)
        _check_same_model([*merged, *parts])
        parts = [*merged, *parts]
    stacked = _stack(parts)
    latest = _latest_rows(stacked)
    kept = _drop_deleted(latest, _deletion_micros(deleted or {}))
    rows = kept.sort_by(
        [("subject_id", "ascending"), ("image_key", "ascending"), ("face_index", "ascending")]
    )
    detectors = {part.meta.detector for part in parts}
    meta = replace(
        parts[-1].meta,
        created_at=utc_now(),
        detector=detectors.pop() if len(detectors) == 1 else None,
    )
    counts = _Counts(
        rows_in=stacked.num_rows,
        duplicates_dropped=stacked.num_rows - latest.num_rows,
        deleted_dropped=latest.num_rows - kept.num_rows,
    )
    return _build(rows, meta), counts


def _checked_parts(
    tables: Sequence[pa.Table], labels: Sequence[str], expected_model_id: str | None
) -> list[_Part]:
    """Validate each part and order them oldest first (stable: ties keep the given order)."""
    parts = []
    for table, label in zip(tables, labels, strict=True):
        try:
            meta = validate_gallery_table(
                table, expected_model_id=expected_model_id, check_norms=False
            )
        except (ModelMismatchError, ValidationError) as exc:
            raise type(exc)(f"{label}: {exc.message}", detail=exc.detail) from exc
        created = _micros(parse_instant(meta.created_at, f"{label} created_at"))
        parts.append(_Part(table, meta, created, label))
    _check_same_model(parts)
    return sorted(parts, key=lambda p: p.created_us)


def _check_same_model(parts: Sequence[_Part]) -> None:
    first = parts[0]
    for part in parts[1:]:
        for name in ("model_id", "weights_sha256", "dim"):
            mine, theirs = getattr(part.meta, name), getattr(first.meta, name)
            if mine != theirs:
                raise ModelMismatchError(
                    f"{part.name} has {name} {mine!r} but {first.name} has {theirs!r}: "
                    "parts of different models cannot be compacted together"
                )


def _stack(parts: Sequence[_Part]) -> pa.Table:
    """One table of all rows, oldest part first, with each row's recency."""
    tables = []
    offset = 0
    for part in parts:
        n = part.table.num_rows
        table = part.table.replace_schema_metadata(None)
        table = table.append_column(_ORDER, pa.array(np.arange(offset, offset + n)))
        tables.append(table)
        offset += n
    return pa.concat_tables(tables)


def _latest_rows(table: pa.Table) -> pa.Table:
    """Keep, per ``(image_key, face_index)``, the row with the highest recency order."""
    winners = table.group_by(["image_key", "face_index"], use_threads=False).aggregate(
        [(_ORDER, "max")]
    )
    keep = pc.is_in(table[_ORDER], value_set=winners[f"{_ORDER}_max"].combine_chunks())
    return table.filter(keep)


def _deletion_micros(deleted: Mapping[str, str]) -> dict[str, int]:
    return {
        subject: _micros(parse_instant(when, f"deletion time of {subject!r}"))
        for subject, when in deleted.items()
    }


def _drop_deleted(table: pa.Table, deleted: Mapping[str, int]) -> pa.Table:
    """Drop rows whose photo was uploaded at or before their subject's erasure.

    One dictionary lookup per distinct subject, then vectorised: tombstones accumulate
    forever, so a loop over them per row would not scale.
    """
    if not deleted or table.num_rows == 0:
        return table
    encoded = cast(
        "pa.DictionaryArray[Any, Any]", pc.dictionary_encode(table["subject_id"].combine_chunks())
    )
    never = np.iinfo(np.int64).min
    subjects = cast(list[str], encoded.dictionary.to_pylist())  # ids are never null
    per_subject = np.array([deleted.get(s, never) for s in subjects], dtype=np.int64)
    deleted_at = per_subject[encoded.indices.to_numpy(zero_copy_only=False)]
    source_at = table["source_at"].combine_chunks().cast(pa.int64()).to_numpy()
    return table.filter(pa.array(source_at > deleted_at))


def without_erased(table: pa.Table, erased: Mapping[str, str]) -> pa.Table:
    """``table`` (a gallery or rejects table) without the rows of subjects in ``erased``
    (``subject_id -> erasure time``) whose photo was uploaded at or before their erasure; a
    row naming an erased subject without an upload time is dropped too. Schema metadata is
    kept, a gallery footer's ``row_count`` updated. The same rule as compaction's, for a
    writer checking a part it wrote."""
    if not erased or table.num_rows == 0:
        return table
    cutoff = _deletion_micros(erased)
    subjects = table["subject_id"].to_pylist()
    times = table["source_at"].combine_chunks().cast(pa.int64()).to_pylist()
    keep = [
        s is None or s not in cutoff or (t is not None and t > cutoff[s])
        for s, t in zip(subjects, times, strict=True)
    ]
    kept = table.filter(pa.array(keep, type=pa.bool_()))
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None or kept.num_rows == table.num_rows:
        return kept
    meta = replace(GalleryMeta.from_json(raw), row_count=kept.num_rows)
    return kept.replace_schema_metadata({**table.schema.metadata, **meta.to_schema_metadata()})


def _build(rows: pa.Table, meta: GalleryMeta) -> pa.Table:
    """Rebuild through :func:`build_gallery_table`, so a compacted gallery passes the same
    checks as any other (unit norms included)."""
    for name in ("face_index", "bbox", "det_score"):
        if rows[name].null_count:
            raise ValidationError(
                f"gallery parts have null {name} values: a gallery built with "
                "build_gallery_table cannot hold them"
            )
    n = rows.num_rows
    bbox = cast("pa.FixedSizeListArray[Any]", rows["bbox"].combine_chunks())
    return build_gallery_table(
        subject_ids=rows["subject_id"].combine_chunks(),
        image_keys=rows["image_key"].combine_chunks(),
        face_indices=rows["face_index"].to_numpy(),
        bboxes=bbox.flatten().to_numpy().reshape(n, 4),
        det_scores=rows["det_score"].to_numpy(),
        embeddings=gallery_embeddings(rows),
        meta=meta,
        source_times=rows["source_at"],
    )


# --------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactionReport:
    """What one compaction did; ``rows_in - duplicates_dropped - deleted_dropped == rows_out``."""

    gallery: str
    key: str
    #: "full" (every part read), "incremental" (the parts the inbox names merged into the
    #: delta) or "fold" (base, delta and those parts into a new base):
    #: :mod:`facegate.storage.compactor`. ``key`` is the base's.
    mode: str
    parts_read: int
    rows_in: int
    rows_out: int
    duplicates_dropped: int
    deleted_dropped: int
    subjects: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
