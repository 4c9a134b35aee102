"""Gallery compaction: many part files on S3 -> one ``gallery.parquet``. Torch-free.

The batch embedding job writes one part per invocation under ``galleries/<g>/parts/`` and
never touches another part, so invocations need no coordination and a retry is just one more
part. The price is that parts overlap (a retried photo appears twice) and go stale (a subject
deleted through the API is still in old parts). Compaction pays it: it merges the parts into
one sorted gallery, keeping the newest row of each face and dropping deleted subjects.

Parts are the source of truth and are never modified or deleted here; ``gallery.parquet`` is
a view that can be rebuilt from them at any time, which is what makes compaction safe to
rerun, interrupt or run with a newer list of deletions.

Deletions are tombstones in the single DynamoDB table (:class:`Tombstones`): a subject's rows
are dropped from every part created at or before its deletion, so photos of a subject
enrolled again after the deletion stay.

This module must never import torch, directly or indirectly.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from facegate.aws import aws_client
from facegate.errors import ModelMismatchError, UnknownGalleryError, ValidationError
from facegate.gallery import (
    METADATA_KEY,
    GalleryMeta,
    build_gallery_table,
    gallery_embeddings,
    rejects_schema,
    validate_gallery_table,
    write_gallery,
)
from facegate.settings import Settings
from facegate.stores import _aws_errors, validate_id

GALLERY_PREFIX = "galleries/"
TOMBSTONE_PK = "TOMBSTONE"
_TOMBSTONE_SK = "SUBJECT#"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_PARQUET_TYPE = "application/vnd.apache.parquet"
#: Helper columns added while compacting; never written.
_ORDER = "__order"
_PART_US = "__part_us"


# --------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------


def _instant(value: Any, what: str) -> datetime:
    """An aware UTC datetime; naive times are refused because they order differently per host."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            text = str(value)
            text = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValidationError(
                f"{what} must be an ISO-8601 timestamp", detail=repr(value)
            ) from exc
    if parsed.utcoffset() is None:
        raise ValidationError(f"{what} must carry a time zone (UTC)", detail=repr(value))
    return parsed.astimezone(UTC)


def _micros(instant: datetime) -> int:
    """Exact integer microseconds since the epoch: comparable in NumPy without float rounding."""
    return (instant - _EPOCH) // _MICROSECOND


def _iso(instant: datetime) -> str:
    """Microsecond precision: a deletion truncated to the second could sort before a part
    written in that same second before it, and let the deleted rows survive."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc_now_seconds() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    subject in ``deleted`` (``subject_id -> deletion time``, ISO-8601 UTC) are dropped from
    parts created at or before that time. Rows come out sorted by ``subject_id``,
    ``image_key``, ``face_index``; the threshold is the most recent part's (a recalibration
    of the same weights applies to old rows too). :class:`ValidationError` for no parts.
    """
    return _compact(parts, None, deleted, expected_model_id)[0]


def _compact(
    tables: Sequence[pa.Table],
    names: Sequence[str] | None,
    deleted: Mapping[str, str] | None,
    expected_model_id: str | None,
) -> tuple[pa.Table, _Counts]:
    if not tables:
        raise ValidationError("no gallery parts to compact")
    labels = list(names) if names is not None else [f"part {i}" for i in range(len(tables))]
    parts = _checked_parts(tables, labels, expected_model_id)
    stacked = _stack(parts)
    latest = _latest_rows(stacked)
    kept = _drop_deleted(latest, _deletion_micros(deleted or {}))
    rows = kept.sort_by(
        [("subject_id", "ascending"), ("image_key", "ascending"), ("face_index", "ascending")]
    )
    meta = replace(parts[-1].meta, created_at=_utc_now_seconds())
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
        created = _micros(_instant(meta.created_at, f"{label} created_at"))
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
    """One table of all rows, oldest part first, with each row's recency and part time."""
    tables = []
    offset = 0
    for part in parts:
        n = part.table.num_rows
        table = part.table.replace_schema_metadata(None)
        table = table.append_column(_ORDER, pa.array(np.arange(offset, offset + n)))
        table = table.append_column(_PART_US, pa.array(np.full(n, part.created_us)))
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
        subject: _micros(_instant(when, f"deletion time of {subject!r}"))
        for subject, when in deleted.items()
    }


def _drop_deleted(table: pa.Table, deleted: Mapping[str, int]) -> pa.Table:
    """Drop rows whose part was created at or before their subject's deletion.

    One dictionary lookup per distinct subject, then vectorised: tombstones accumulate
    forever, so a loop over them per row would not scale.
    """
    if not deleted or table.num_rows == 0:
        return table
    encoded = pc.dictionary_encode(table["subject_id"].combine_chunks())
    never = np.iinfo(np.int64).min
    per_subject = np.array(
        [deleted.get(s, never) for s in encoded.dictionary.to_pylist()], dtype=np.int64
    )
    deleted_at = per_subject[encoded.indices.to_numpy(zero_copy_only=False)]
    part_at = table[_PART_US].to_numpy()
    return table.filter(pa.array(part_at > deleted_at))


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
    return build_gallery_table(
        subject_ids=rows["subject_id"].combine_chunks(),
        image_keys=rows["image_key"].combine_chunks(),
        face_indices=rows["face_index"].to_numpy(),
        bboxes=rows["bbox"].combine_chunks().flatten().to_numpy().reshape(n, 4),
        det_scores=rows["det_score"].to_numpy(),
        embeddings=gallery_embeddings(rows),
        meta=meta,
    )


# --------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactionReport:
    """What one compaction did; ``rows_in - duplicates_dropped - deleted_dropped == rows_out``."""

    gallery: str
    key: str
    parts_read: int
    rows_in: int
    rows_out: int
    duplicates_dropped: int
    deleted_dropped: int
    subjects: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class GalleryStore:
    """Gallery parts, rejects and compacted galleries in one bucket.

    Layout: ``galleries/<g>/parts/<part>.parquet``, ``galleries/<g>/rejects/<part>.parquet``
    and ``galleries/<g>/gallery.parquet``. Objects are written with SSE-S3 because galleries
    hold biometric templates; a ``put_object`` replaces ``gallery.parquet`` atomically, so a
    reader sees the previous gallery or the new one, never half of one.
    """

    #: ``list_objects_v2`` page size; the paginator follows continuation tokens past it.
    list_page_size: int = 1000

    def __init__(self, s3: BaseClient, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    @classmethod
    def from_settings(cls, settings: Settings) -> GalleryStore:
        return cls(aws_client("s3", settings), settings.bucket)

    # -- keys --------------------------------------------------------------------------

    @staticmethod
    def gallery_prefix(gallery: str) -> str:
        """``galleries/<g>/``: names are ids (no ``/``), so one gallery never lists another's."""
        return f"{GALLERY_PREFIX}{validate_id(gallery, 'gallery')}/"

    @classmethod
    def part_key(cls, gallery: str, part: str) -> str:
        return f"{cls.gallery_prefix(gallery)}parts/{validate_id(part, 'part')}.parquet"

    @classmethod
    def rejects_key(cls, gallery: str, part: str) -> str:
        return f"{cls.gallery_prefix(gallery)}rejects/{validate_id(part, 'part')}.parquet"

    @classmethod
    def gallery_key(cls, gallery: str) -> str:
        return f"{cls.gallery_prefix(gallery)}gallery.parquet"

    # -- listing -----------------------------------------------------------------------

    def list_parts(self, gallery: str) -> list[str]:
        """Keys of the gallery's parts, sorted (part names are the batch job's to choose)."""
        return self._list(f"{self.gallery_prefix(gallery)}parts/")

    def list_rejects(self, gallery: str) -> list[str]:
        return self._list(f"{self.gallery_prefix(gallery)}rejects/")

    def _list(self, prefix: str) -> list[str]:
        with _aws_errors(f"listing s3://{self.bucket}/{prefix}"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return sorted(k for k in keys if k.endswith(".parquet"))

    def exists(self, key: str) -> bool:
        with _aws_errors(f"checking s3://{self.bucket}/{key}"):
            try:
                self._s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in _NOT_FOUND:
                    return False
                raise
        return True

    # -- objects -----------------------------------------------------------------------

    def read_table(self, key: str, columns: Sequence[str] | None = None) -> pa.Table:
        """The Parquet object at ``key`` (schema metadata kept); checking it is the caller's.

        :class:`StorageError` when it cannot be fetched, :class:`ValidationError` when the
        bytes are not Parquet.
        """
        with _aws_errors(f"reading s3://{self.bucket}/{key}"):
            data = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        try:
            return pq.read_table(
                pa.BufferReader(data), columns=list(columns) if columns is not None else None
            )
        except pa.ArrowException as exc:
            raise ValidationError(f"not a Parquet file: s3://{self.bucket}/{key}") from exc

    def write_table(self, key: str, table: pa.Table) -> None:
        """Write a gallery table (validated by :func:`write_gallery`) or a rejects table.

        Anything else is refused: only those two kinds of object live under ``galleries/``.
        """
        sink = pa.BufferOutputStream()
        if METADATA_KEY in (table.schema.metadata or {}):
            write_gallery(table, sink)
        elif table.schema.remove_metadata().equals(rejects_schema()):
            pq.write_table(table, sink, compression="zstd")
        else:
            raise ValidationError(f"{key}: not a gallery or rejects table")
        with _aws_errors(f"writing s3://{self.bucket}/{key}"):
            self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=sink.getvalue().to_pybytes(),
                ContentType=_PARQUET_TYPE,
                ServerSideEncryption="AES256",
            )

    # -- compaction --------------------------------------------------------------------

    def compact(
        self,
        gallery: str,
        *,
        deleted: Mapping[str, str] | None = None,
        expected_model_id: str | None = None,
    ) -> CompactionReport:
        """Rebuild ``gallery.parquet`` from every part (see :func:`compact_tables`).

        Parts are left as they are: they are the source of truth, and a later compaction
        with more deletions must be able to start from them again.
        """
        started = time.perf_counter()
        keys = self.list_parts(gallery)
        if not keys:
            raise UnknownGalleryError(f"gallery {gallery} has no parts")
        tables = [self.read_table(k) for k in keys]
        table, counts = _compact(tables, keys, deleted, expected_model_id)
        key = self.gallery_key(gallery)
        self.write_table(key, table)
        return CompactionReport(
            gallery=gallery,
            key=key,
            parts_read=len(keys),
            rows_in=counts.rows_in,
            rows_out=table.num_rows,
            duplicates_dropped=counts.duplicates_dropped,
            deleted_dropped=counts.deleted_dropped,
            subjects=_distinct(table["subject_id"]),
            seconds=round(time.perf_counter() - started, 3),
        )


def _distinct(column: pa.ChunkedArray) -> int:
    return len(pc.unique(column)) if len(column) else 0


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------


def summarise(store: GalleryStore, gallery: str) -> dict[str, Any]:
    """What ``facegate gallery show`` prints.

    From ``gallery.parquet`` when it exists (``compacted: true``); otherwise from the raw
    parts, so ``rows`` counts retried duplicates and deleted subjects until compaction.
    Rejects are counted by reason over every rejects part. :class:`ValidationError` when the
    gallery has no objects at all.
    """
    part_keys = store.list_parts(gallery)
    reject_keys = store.list_rejects(gallery)
    gallery_key = store.gallery_key(gallery)
    compacted = store.exists(gallery_key)
    if not (compacted or part_keys or reject_keys):
        raise UnknownGalleryError(f"gallery {gallery} not found")
    sources = [gallery_key] if compacted else part_keys
    metas, subjects = _subjects_and_metas(store, sources)
    newest = max(metas, key=lambda m: _instant(m.created_at, "created_at"), default=None)
    return {
        "gallery": gallery,
        "rows": sum(m.row_count for m in metas),
        "subjects": len(subjects),
        "parts": len(part_keys),
        "rejects": _rejects_by_reason(store, reject_keys),
        "model_id": newest.model_id if newest else None,
        "weights_sha256": newest.weights_sha256 if newest else None,
        "dim": newest.dim if newest else None,
        "threshold": newest.threshold if newest else None,
        "built_at": newest.created_at if compacted and newest else None,
        "compacted": compacted,
    }


def _subjects_and_metas(
    store: GalleryStore, keys: Sequence[str]
) -> tuple[list[GalleryMeta], set[str]]:
    """Footer metadata and distinct subject ids, decoding only the ``subject_id`` column."""
    metas: list[GalleryMeta] = []
    subjects: set[str] = set()
    for key in keys:
        table = store.read_table(key, columns=["subject_id"])
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise ValidationError(f"not a FaceGate gallery: s3://{store.bucket}/{key}")
        meta = GalleryMeta.from_json(raw)
        if table.num_rows != meta.row_count:
            raise ValidationError(
                f"{key} has {table.num_rows} rows, its metadata says {meta.row_count}"
            )
        metas.append(meta)
        subjects.update(pc.unique(table["subject_id"]).to_pylist())
    return metas, subjects


def _rejects_by_reason(store: GalleryStore, keys: Sequence[str]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for key in keys:
        counts.update(store.read_table(key, columns=["reason"])["reason"].to_pylist())
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------------------
# DynamoDB: tombstones
# --------------------------------------------------------------------------------------


class Tombstones:
    """Deletion times of subjects, in the single table (``pk=TOMBSTONE``, ``sk=SUBJECT#<id>``).

    One partition, so that compaction reads every tombstone with one (paginated) query.
    Items carry no ``kind`` attribute and so stay out of the sparse ``subjects`` index that
    lists enrolled subjects. A tombstone only ever moves forward in time: a late or replayed
    ``record`` with an older time must not resurrect rows deleted by a newer one.
    """

    def __init__(self, dynamodb: BaseClient, table: str) -> None:
        self._db = dynamodb
        self.table = table

    @classmethod
    def from_settings(cls, settings: Settings) -> Tombstones:
        return cls(aws_client("dynamodb", settings), settings.table)

    def record(self, subject_id: str, when: str | datetime | None = None) -> str:
        """Record that ``subject_id`` was deleted at ``when`` (default now); return the stored time.

        The returned time is the later of ``when`` and any earlier record for the subject.
        """
        validate_id(subject_id)
        stamp = _iso(_instant(when, "when") if when is not None else datetime.now(UTC))
        key = {"pk": {"S": TOMBSTONE_PK}, "sk": {"S": _TOMBSTONE_SK + subject_id}}
        with _aws_errors(f"recording deletion of {subject_id}"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression="SET deleted_at = :when, subject_id = :subject",
                    ConditionExpression="attribute_not_exists(deleted_at) OR deleted_at < :when",
                    ExpressionAttributeValues={
                        ":when": {"S": stamp},
                        ":subject": {"S": subject_id},
                    },
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                item = self._db.get_item(TableName=self.table, Key=key, ConsistentRead=True)
                return item["Item"]["deleted_at"]["S"]
        return stamp

    def all(self, page_size: int | None = None) -> dict[str, str]:
        """Every tombstone as ``subject_id -> deleted_at``, read consistently so that a
        deletion acknowledged just before a compaction is honoured by it."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": TOMBSTONE_PK}},
            "ProjectionExpression": "sk, deleted_at",
            "ConsistentRead": True,
        }
        if page_size is not None:
            kwargs["PaginationConfig"] = {"PageSize": page_size}
        with _aws_errors("reading tombstones"):
            pages = self._db.get_paginator("query").paginate(**kwargs)
            items = [item for page in pages for item in page.get("Items", [])]
        return {i["sk"]["S"].removeprefix(_TOMBSTONE_SK): i["deleted_at"]["S"] for i in items}
