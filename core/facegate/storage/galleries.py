"""Gallery parts, rejects and compacted galleries on S3, and their summaries. Torch-free."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from facegate.common import parse_instant
from facegate.errors import (
    ObjectNotFoundError,
    StorageError,
    UnknownGalleryError,
    ValidationError,
    WriteConflictError,
)
from facegate.gallery.compaction import CompactionReport, _compact
from facegate.gallery.format import (
    METADATA_KEY,
    GalleryMeta,
    gallery_meta_from_schema,
    rejects_schema,
    write_gallery,
)
from facegate.lazy import lazy_module
from facegate.settings import Settings
from facegate.storage import keys as layout
from facegate.storage.clients import aws_client
from facegate.storage.keys import GALLERY_PREFIX
from facegate.storage.objects import PARQUET_TYPE, ObjectInfo, ObjectStore
from facegate.storage.tombstones import ErasureLookup, gallery_scope

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
else:
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")
    pq = lazy_module("pyarrow.parquet")

#: Compactions of one gallery that may lose the race for ``gallery.parquet`` in a row before
#: the run gives up (a retryable ``write_conflict``): each retry reads everything again.
COMPACTION_ATTEMPTS = 4
#: ``compaction.json``'s format; a record of another is ignored (a full rebuild).
STATE_FORMAT = 1

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: ``GALLERY_PREFIX`` is defined with the other layouts in :mod:`facegate.storage.keys`.
__all__ = ["GALLERY_PREFIX", "GalleryStore", "summarise"]


class GalleryStore:
    """Gallery parts, rejects and compacted galleries in one bucket.

    Layout (:mod:`facegate.storage.keys`): ``galleries/<g>/parts/<part>.parquet``,
    ``galleries/<g>/rejects/<part>.parquet`` and ``galleries/<g>/gallery.parquet``. Objects
    go through :class:`ObjectStore`, so they are written encrypted (galleries hold biometric
    templates) and typed as Parquet; a put replaces ``gallery.parquet`` atomically, so a
    reader sees the previous gallery or the new one, never half of one.
    """

    def __init__(self, s3: S3Client, bucket: str) -> None:
        self.objects = ObjectStore(s3, bucket)
        self.bucket = bucket

    @classmethod
    def from_settings(cls, settings: Settings) -> GalleryStore:
        return cls(aws_client("s3", settings), settings.bucket)

    @property
    def list_page_size(self) -> int:
        """``list_objects_v2`` page size; the paginator follows continuation tokens past it."""
        return self.objects.list_page_size

    @list_page_size.setter
    def list_page_size(self, size: int) -> None:
        self.objects.list_page_size = size

    # -- keys: the layouts of facegate.storage.keys, kept as methods for their callers ---

    gallery_prefix = staticmethod(layout.gallery_prefix)
    part_key = staticmethod(layout.part_key)
    rejects_key = staticmethod(layout.rejects_key)
    gallery_key = staticmethod(layout.gallery_key)

    # -- listing -----------------------------------------------------------------------

    def list_parts(self, gallery: str) -> list[str]:
        """Keys of the gallery's parts, sorted (part names are the batch job's to choose)."""
        return self._parquet(layout.parts_prefix(gallery))

    def list_rejects(self, gallery: str) -> list[str]:
        return self._parquet(layout.rejects_prefix(gallery))

    def _parquet(self, prefix: str) -> list[str]:
        return [k for k in self.objects.list_keys(prefix) if k.endswith(".parquet")]

    def exists(self, key: str) -> bool:
        return self.objects.exists(key)

    # -- objects -----------------------------------------------------------------------

    def read_table(self, key: str, columns: Sequence[str] | None = None) -> pa.Table:
        """The Parquet object at ``key`` (schema metadata kept); checking it is the caller's.

        :class:`StorageError` when it cannot be fetched, also when it is missing: the keys
        read here come from a listing, so a missing one was deleted in between and a retry
        lists again. :class:`ValidationError` when the bytes are not Parquet.
        """
        try:
            data = self.objects.get(key).body
        except ObjectNotFoundError as exc:
            raise StorageError(
                f"{exc.message}: it was listed a moment ago", detail=exc.detail
            ) from exc
        try:
            return pq.read_table(
                pa.BufferReader(data), columns=list(columns) if columns is not None else None
            )
        except pa.ArrowException as exc:
            raise ValidationError(f"not a Parquet file: s3://{self.bucket}/{key}") from exc

    def write_table(
        self,
        key: str,
        table: pa.Table,
        *,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> ObjectInfo:
        """Write a gallery table (validated by :func:`write_gallery`) or a rejects table;
        returns the version written (an erasure deletes every other one). ``if_match`` /
        ``if_none_match``: a conditional write (:meth:`ObjectStore.put`).

        Anything else is refused: only those two kinds of object live under ``galleries/``.
        """
        sink = pa.BufferOutputStream()
        if METADATA_KEY in (table.schema.metadata or {}):
            write_gallery(table, sink)
        elif table.schema.remove_metadata().equals(rejects_schema()):
            pq.write_table(table, sink, compression="zstd")
        else:
            raise ValidationError(f"{key}: not a gallery or rejects table")
        return self.objects.put(
            key,
            sink.getvalue().to_pybytes(),
            content_type=PARQUET_TYPE,
            metadata=metadata,
            if_match=if_match,
            if_none_match=if_none_match,
        )

    # -- compaction --------------------------------------------------------------------

    def compact(
        self,
        gallery: str,
        *,
        erasures: ErasureLookup | None = None,
        expected_model_id: str | None = None,
        full: bool = False,
    ) -> CompactionReport:
        """Bring ``gallery.parquet`` up to date with the parts (see :func:`compact_tables`),
        without the rows of subjects erased in the gallery's scope (:func:`subject_scope`)
        after their photo was uploaded.

        Incremental by default: ``compaction.json`` records the parts (key and ETag) the last
        run merged and the ``gallery.parquet`` it wrote; while that gallery is still the
        current one and every part it merged is still there unchanged (one listing tells:
        S3 lists ETags), a run reads only the new parts and merges them onto it, the new
        rows winning. Anything else (no record, ``full``, a gallery written by someone else
        such as an erasure's rewrite, a part rewritten or gone, whose old rows the gallery
        may hold) reads every part: the full rebuild. Tombstones apply to every row either
        way, so a subject erased since the last run leaves even when nothing is new.

        Parts are left as they are: an erasure rewrites the parts that held the person
        (:mod:`facegate.batch.erasure`); compaction only keeps a part written late, from a
        photo older than the erasure, out of the gallery until then.
        """
        started = time.perf_counter()
        key = layout.gallery_key(gallery)
        for attempt in range(1, COMPACTION_ATTEMPTS + 1):
            # The gallery as it is before the parts are read: written back only if no one
            # (an erasure's rewrite, another compaction) has replaced it since, else a table
            # built from parts read before an erasure would bring the erased person back.
            etag: str | None
            try:
                etag = self.objects.head(key).etag
            except ObjectNotFoundError:
                etag = None
            listed = {
                k: e
                for k, e in self.objects.list_etags(layout.parts_prefix(gallery)).items()
                if k.endswith(".parquet")
            }
            if not listed:
                raise UnknownGalleryError(f"gallery {gallery} has no parts")
            merged = None if full or etag is None else self._merged_parts(gallery, etag)
            base: pa.Table | None = None
            if merged is not None and all(listed.get(k) == e for k, e in merged.items()):
                keys = sorted(k for k in listed if k not in merged)
                base = self.read_table(key)
            else:
                keys = sorted(listed)
            tables = [self.read_table(k) for k in keys]
            everyone = [*tables, *([base] if base is not None else [])]
            deleted: dict[str, str] = {}
            if erasures is not None:
                subjects = {
                    str(s) for t in everyone for s in pc.unique(t["subject_id"]).to_pylist()
                }
                deleted = erasures.in_scope(subject_scope(gallery, everyone), subjects)
            if base is not None and not keys:
                # No new parts: the gallery only loses the rows of subjects erased since.
                table, counts = _compact([base], [key], deleted, expected_model_id)
                if counts.deleted_dropped == 0:
                    return _unchanged(gallery, key, base, started)
            else:
                table, counts = _compact(tables, keys, deleted, expected_model_id, base=base)
            try:
                if etag is None:
                    written = self.write_table(key, table, if_none_match="*")
                else:
                    written = self.write_table(key, table, if_match=etag)
                break
            except WriteConflictError:
                if attempt == COMPACTION_ATTEMPTS:
                    raise
        subjects_out = _distinct(table["subject_id"])
        self.objects.put_json(
            layout.compaction_state_key(gallery),
            {
                "format": STATE_FORMAT,
                "gallery_etag": written.etag,
                "parts": listed,
            },
        )
        return CompactionReport(
            gallery=gallery,
            key=key,
            mode="full" if base is None else "incremental",
            parts_read=len(keys),
            rows_in=counts.rows_in,
            rows_out=table.num_rows,
            duplicates_dropped=counts.duplicates_dropped,
            deleted_dropped=counts.deleted_dropped,
            subjects=subjects_out,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _merged_parts(self, gallery: str, etag: str) -> dict[str, str] | None:
        """The parts the last compaction merged, if it wrote the gallery that has ``etag``."""
        state = self.objects.get_json(layout.compaction_state_key(gallery), "compaction state")
        if state is None or state.get("format") != STATE_FORMAT:
            return None
        if state.get("gallery_etag") != etag or not isinstance(state.get("parts"), dict):
            return None
        return {str(k): str(v) for k, v in state["parts"].items()}


def _unchanged(gallery: str, key: str, gallery_table: pa.Table, started: float) -> CompactionReport:
    """Nothing new since the last run and no one erased: nothing written."""
    rows = gallery_table.num_rows
    return CompactionReport(
        gallery=gallery,
        key=key,
        mode="incremental",
        parts_read=0,
        rows_in=rows,
        rows_out=rows,
        duplicates_dropped=0,
        deleted_dropped=0,
        subjects=_distinct(gallery_table["subject_id"]),
        seconds=round(time.perf_counter() - started, 3),
    )


def subject_scope(gallery: str, tables: Sequence[pa.Table] = ()) -> str:
    """Whose subjects the gallery's rows are, for erasure: the ``subject_scope`` its newest
    table's metadata names (a gallery re-embedded from the enrolled subjects or from another
    gallery), else its own, ``gallery:<g>``."""
    return _scope_of(gallery, [table.schema for table in tables])


def served_subject_scope(objects: ObjectStore, gallery: str) -> str:
    """:func:`subject_scope` of the gallery as served, from ``gallery.parquet``'s footer only
    (ranged reads; the embeddings are never fetched); the gallery's own scope when it has
    not been compacted yet."""
    try:
        with objects.open(layout.gallery_key(gallery)) as reader:
            schema = pq.ParquetFile(pa.PythonFile(reader, mode="r")).schema_arrow
    except ObjectNotFoundError:
        return gallery_scope(gallery)
    except pa.ArrowException as exc:
        raise ValidationError(f"gallery {gallery!r} is not a Parquet table") from exc
    return _scope_of(gallery, [schema])


def served_meta(objects: ObjectStore, gallery: str) -> GalleryMeta:
    """The footer metadata of the gallery as served (``gallery.parquet``, ranged reads);
    :class:`UnknownGalleryError` when it has not been compacted (or does not exist)."""
    try:
        with objects.open(layout.gallery_key(gallery)) as reader:
            schema = pq.ParquetFile(pa.PythonFile(reader, mode="r")).schema_arrow
    except ObjectNotFoundError as exc:
        raise UnknownGalleryError(f"gallery {gallery!r} has not been built") from exc
    except pa.ArrowException as exc:
        raise ValidationError(f"gallery {gallery!r} is not a Parquet table") from exc
    return gallery_meta_from_schema(schema)


def _scope_of(gallery: str, schemas: Sequence[pa.Schema]) -> str:
    newest: GalleryMeta | None = None
    for schema in schemas:
        raw = (schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            continue
        meta = GalleryMeta.from_json(raw)
        if newest is None or parse_instant(meta.created_at, "created_at") >= parse_instant(
            newest.created_at, "created_at"
        ):
            newest = meta
    if newest is not None and newest.subject_scope is not None:
        return newest.subject_scope
    return gallery_scope(gallery)


def _distinct(column: pa.ChunkedArray[Any]) -> int:
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
    gallery_key = layout.gallery_key(gallery)
    compacted = store.exists(gallery_key)
    if not (compacted or part_keys or reject_keys):
        raise UnknownGalleryError(f"gallery {gallery} not found")
    sources = [gallery_key] if compacted else part_keys
    metas, subjects = _subjects_and_metas(store, sources)
    newest = max(metas, key=lambda m: parse_instant(m.created_at, "created_at"), default=None)
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
        subjects.update(str(s) for s in pc.unique(table["subject_id"]).to_pylist())
    return metas, subjects


def _rejects_by_reason(store: GalleryStore, keys: Sequence[str]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for key in keys:
        counts.update(
            str(r) for r in store.read_table(key, columns=["reason"])["reason"].to_pylist()
        )
    return dict(sorted(counts.items()))
