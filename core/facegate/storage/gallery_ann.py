"""A gallery's ANN index on S3: built from ``gallery.parquet``, loaded with it. Torch-free.

Layout: ``galleries/<g>/ann/<sha256>.faiss`` (the index, named by its content) and
``galleries/<g>/ann/manifest.json`` (:class:`~facegate.gallery.ann.AnnManifest`: the gallery
ETag and row count it was built from, its faiss parameters, its sha256). A reader
(:func:`gallery_loader`) fetches the index only when the manifest names the gallery version
it has, so a gallery compacted or erased since is searched exactly until the next build. An
erasure removes the whole ``ann/`` folder, every version (:mod:`facegate.batch.erasure`):
the index holds quantised copies of the rows.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from facegate.errors import (
    ObjectNotFoundError,
    StorageError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.gallery.ann import (
    ANN_MIN_ROWS,
    AnnManifest,
    AnnParams,
    AnnPayload,
    timed_build,
)
from facegate.gallery.generations import applies, merge_generations
from facegate.gallery.index import GalleryIndex
from facegate.lazy import lazy_module
from facegate.storage import keys as layout
from facegate.storage.objects import JSON_TYPE, ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
else:
    pa = lazy_module("pyarrow")
    pq = lazy_module("pyarrow.parquet")

INDEX_TYPE = "application/octet-stream"
#: Rows handed to faiss at a time while building (float16 rows, converted per block).
BUILD_BLOCK_ROWS = 1 << 16


def build_gallery_ann(
    objects: ObjectStore,
    gallery: str,
    *,
    min_rows: int = ANN_MIN_ROWS,
    params: AnnParams | None = None,
) -> AnnManifest | None:
    """Build the index of the current ``gallery.parquet`` (the base generation; a delta on
    top of it is searched exactly beside the index, :func:`served_view`) and publish it;
    None (nothing written) when the base has fewer than ``min_rows`` rows.

    The rows are held as float16 (half the memory of float32; the index's 4-bit codes lose
    far more than that), streamed from S3, so building 10M rows of 256 dims needs about 5 GB
    plus the codes (32 bytes a row).
    Index objects of earlier builds are deleted once the new manifest is in place.
    """
    key = layout.gallery_key(gallery)
    try:
        etag = objects.head(key).etag
        # Streamed row group by row group over ranged GETs, pinned to that version: the
        # build holds the float16 matrix, never the Parquet bytes too.
        with io.BufferedReader(objects.open(key, etag=etag), buffer_size=1 << 20) as body:
            index = GalleryIndex.from_parquet(body, dtype=np.float16)
    except ObjectNotFoundError as exc:
        raise UnknownGalleryError(f"gallery {gallery!r} has not been compacted") from exc
    if index.n_rows < min_rows:
        return None
    if index.meta is None:
        raise ValidationError(f"gallery {gallery!r} has no metadata")
    params = params or AnnParams.for_rows(index.n_rows, index.dim)
    matrix = index.embeddings
    blocks = [matrix[s : s + BUILD_BLOCK_ROWS] for s in range(0, index.n_rows, BUILD_BLOCK_ROWS)]
    _, data, seconds = timed_build(blocks, index.n_rows, index.dim, params)
    sha = hashlib.sha256(data).hexdigest()
    index_key = f"{layout.ann_prefix(gallery)}{sha}.faiss"
    objects.put(index_key, data, content_type=INDEX_TYPE)
    manifest = AnnManifest(
        gallery_etag=etag,
        gallery_rows=index.n_rows,
        model_id=index.meta.model_id,
        dim=index.dim,
        params=params,
        index_key=index_key,
        index_sha256=sha,
        index_bytes=len(data),
        build_s=round(seconds, 3),
    )
    objects.put(
        layout.ann_manifest_key(gallery), manifest.to_json().encode(), content_type=JSON_TYPE
    )
    for old in objects.list_keys(layout.ann_prefix(gallery)):
        if old.endswith(".faiss") and old != index_key:
            objects.delete(old)
    return manifest


def read_manifest(objects: ObjectStore, gallery: str) -> AnnManifest | None:
    try:
        return AnnManifest.from_json(objects.get(layout.ann_manifest_key(gallery)).body)
    except ObjectNotFoundError:
        return None


Loaded = tuple[str, "bytes | pa.Table | AnnPayload | None"]


@dataclass(frozen=True)
class ServedView:
    """The gallery a reader serves: the base's bytes alone, or the base with its delta on
    top (:func:`~facegate.gallery.generations.merge_generations`), the rows the delta put
    in and the base's row count (what an index of the base covers)."""

    gallery: bytes | pa.Table
    base_rows: int | None = None
    delta_rows: np.ndarray | None = None

    @property
    def table(self) -> pa.Table:
        return self.gallery if isinstance(self.gallery, pa.Table) else _parquet(self.gallery, "")


def served_view(base: bytes, delta: bytes | None) -> ServedView:
    """The base's bytes when there is no delta that applies to it (or it has no rows), else
    the merged table."""
    if delta is None:
        return ServedView(base)
    delta_table = _parquet(delta, "delta.parquet")
    if delta_table.num_rows == 0:
        return ServedView(base)
    base_table = _parquet(base, "gallery.parquet")
    if not applies(base_table.schema, delta_table.schema):
        return ServedView(base)
    table, positions = merge_generations(base_table, delta_table)
    return ServedView(table, base_table.num_rows, positions)


def gallery_loader(objects: ObjectStore, gallery: str) -> Callable[[str | None], Loaded]:
    """The :class:`~facegate.gallery.cache.GalleryCache` loader of a gallery as served (its
    base and delta, :func:`served_view`) and its base's index.

    Its etag is ``<base>|<delta>|<manifest>`` (empty for an object that is not there): a warm
    function asks S3 three times (each conditional) whether any changed, and so picks up a
    compaction's new delta and an index built after it loaded the gallery.
    :class:`UnknownGalleryError` when the gallery has not been compacted."""
    key = layout.gallery_key(gallery)
    delta_key = layout.delta_key(gallery)
    manifest_key = layout.ann_manifest_key(gallery)

    def optional(name: str, known: str) -> tuple[str, bytes | None]:
        try:
            return objects.get_if_changed(name, known or None)
        except ObjectNotFoundError:
            return "", None

    def load(known: str | None) -> Loaded:
        known_base, known_delta, known_manifest = [*(known or "").split("|"), "", ""][:3]
        try:
            base_etag, base = objects.get_if_changed(key, known_base or None)
        except ObjectNotFoundError as exc:
            raise UnknownGalleryError(f"gallery {gallery!r} has not been built") from exc
        delta_etag, delta = optional(delta_key, known_delta)
        manifest_etag, raw = optional(manifest_key, known_manifest)
        combined = f"{base_etag}|{delta_etag}|{manifest_etag}"
        if combined == known:
            return combined, None
        # Something changed: the cache needs every part again, not only the changed one.
        if base is None:
            base_etag, base = objects.get_if_changed(key, None)
        if delta is None and delta_etag:
            delta_etag, delta = optional(delta_key, "")
        if raw is None and manifest_etag:
            manifest_etag, raw = optional(manifest_key, "")
        combined = f"{base_etag}|{delta_etag}|{manifest_etag}"
        if base is None:
            raise StorageError(f"gallery {gallery!r} came back empty")
        view = served_view(base, delta)
        if raw is None:
            return combined, view.gallery
        manifest = AnnManifest.from_json(raw)
        if manifest.gallery_etag != base_etag:
            return combined, view.gallery  # built from another base: exact until rebuilt
        try:
            data = objects.get(manifest.index_key).body
        except ObjectNotFoundError:
            return combined, view.gallery
        return combined, AnnPayload(
            view.gallery, base_etag, manifest, data, view.base_rows, view.delta_rows
        )

    return load


def _parquet(data: bytes, name: str) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data))
    except pa.ArrowException as exc:
        raise ValidationError(f"{name} is not a Parquet table") from exc
