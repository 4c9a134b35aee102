"""Gallery parts, rejects and compacted galleries on S3, and their summaries. Torch-free."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from facegate.common import parse_instant
from facegate.errors import (
    ObjectNotFoundError,
    StorageError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.gallery.compaction import CompactionReport
from facegate.gallery.format import (
    METADATA_KEY,
    GalleryMeta,
    gallery_meta_from_schema,
    rejects_schema,
    write_gallery,
)
from facegate.gallery.generations import applies
from facegate.lazy import lazy_module
from facegate.settings import Settings
from facegate.storage import keys as layout
from facegate.storage.clients import aws_client
from facegate.storage.compactor import compact_gallery, scope_of, subject_scope
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

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Content type of an inbox marker (a random token, nobody's data).
MARKER_TYPE = "application/octet-stream"

#: ``GALLERY_PREFIX`` is defined with the other layouts in :mod:`facegate.storage.keys`.
__all__ = ["GALLERY_PREFIX", "GalleryStore", "subject_scope", "summarise"]


class GalleryStore:
    """Gallery parts, rejects and compacted galleries in one bucket.

    Layout (:mod:`facegate.storage.keys`): ``galleries/<g>/parts/<part>.parquet``,
    ``galleries/<g>/rejects/<part>.parquet``, the compacted generations
    ``galleries/<g>/gallery.parquet`` and ``delta.parquet``, and ``galleries/<g>/inbox/``. Objects
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
        return self.parse_table(key, data, columns)

    def parse_table(self, key: str, data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
        """The bytes of the Parquet object at ``key``; :class:`ValidationError` if they are
        not Parquet."""
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

        Anything else is refused: only those two kinds of table live under ``galleries/``.
        A part is announced in the gallery's inbox first (a marker holding a random token,
        :func:`~facegate.storage.keys.inbox_key`), so the next compaction finds it without
        listing every part; a marker whose part never came is skipped by compaction.
        """
        sink = pa.BufferOutputStream()
        if METADATA_KEY in (table.schema.metadata or {}):
            write_gallery(table, sink)
        elif table.schema.remove_metadata().equals(rejects_schema()):
            pq.write_table(table, sink, compression="zstd")
        else:
            raise ValidationError(f"{key}: not a gallery or rejects table")
        if layout.is_part_key(key):
            # A token of its own: every marker has its own ETag, so a compaction deletes
            # only the marker it saw (a conditional delete), not one written after.
            token = uuid.uuid4().hex.encode()
            self.objects.put(layout.inbox_key(key), token, content_type=MARKER_TYPE)
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
        """Bring the gallery's generations up to date with its parts
        (:mod:`facegate.storage.compactor`: incremental, fold or full), without the rows of
        subjects erased in the gallery's scope (:func:`subject_scope`) after their photo was
        uploaded; ``full`` forces a rebuild from every part.

        Parts are left as they are: an erasure rewrites the parts that held the person
        (:mod:`facegate.batch.erasure`); compaction only keeps a part written late, from a
        photo older than the erasure, out of the gallery until then.
        """
        return compact_gallery(
            self, gallery, erasures=erasures, expected_model_id=expected_model_id, full=full
        )


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
    return scope_of(gallery, [schema])


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
    rows = sum(m.row_count for m in metas)
    if compacted:
        delta_rows, delta_metas, delta_subjects = _delta_rows(store, gallery)
        rows += delta_rows
        metas += delta_metas
        subjects |= delta_subjects
    newest = max(metas, key=lambda m: parse_instant(m.created_at, "created_at"), default=None)
    return {
        "gallery": gallery,
        "rows": rows,
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


def _delta_rows(store: GalleryStore, gallery: str) -> tuple[int, list[GalleryMeta], set[str]]:
    """What the gallery's delta adds to its base as served: its rows less those it replaces,
    its footer, its subjects; nothing when it does not apply (:func:`applies`)."""
    ids = ["subject_id", "image_key", "face_index"]
    try:
        delta = store.read_table(layout.delta_key(gallery), columns=ids)
    except StorageError:
        if not store.exists(layout.delta_key(gallery)):
            return 0, [], set()
        raise
    base = store.read_table(layout.gallery_key(gallery), columns=ids)
    if delta.num_rows == 0 or not applies(base.schema, delta.schema):
        return 0, [], set()
    replaced = (
        base.select(ids[1:]).join(delta.select(ids[1:]), keys=ids[1:], join_type="inner").num_rows
    )
    meta = GalleryMeta.from_json(delta.schema.metadata[METADATA_KEY])
    subjects = {str(s) for s in pc.unique(delta["subject_id"]).to_pylist()}
    return delta.num_rows - replaced, [meta], subjects


def _rejects_by_reason(store: GalleryStore, keys: Sequence[str]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for key in keys:
        counts.update(
            str(r) for r in store.read_table(key, columns=["reason"])["reason"].to_pylist()
        )
    return dict(sorted(counts.items()))
