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
from facegate.gallery.index import GalleryIndex
from facegate.storage import keys as layout
from facegate.storage.objects import JSON_TYPE, ObjectStore

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
    """Build the index of the current ``gallery.parquet`` and publish it; None (nothing
    written) when the gallery has fewer than ``min_rows`` rows.

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


Loaded = tuple[str, "bytes | AnnPayload | None"]


def gallery_loader(objects: ObjectStore, gallery: str) -> Callable[[str | None], Loaded]:
    """The :class:`~facegate.gallery.cache.GalleryCache` loader of a gallery and its index.

    Its etag is the gallery's, joined by ``|`` to the manifest's when there is one: a warm
    function asks S3 twice (both conditional) whether either changed, and so picks up an
    index built after it loaded the gallery. :class:`UnknownGalleryError` when the gallery
    has not been compacted."""
    key = layout.gallery_key(gallery)
    manifest_key = layout.ann_manifest_key(gallery)

    def load(known: str | None) -> Loaded:
        known_gallery, _, known_manifest = (known or "").partition("|")
        try:
            etag, body = objects.get_if_changed(key, known_gallery or None)
        except ObjectNotFoundError as exc:
            raise UnknownGalleryError(f"gallery {gallery!r} has not been built") from exc
        try:
            manifest_etag, raw = objects.get_if_changed(manifest_key, known_manifest or None)
        except ObjectNotFoundError:
            manifest_etag, raw = "", None
        combined = f"{etag}|{manifest_etag}" if manifest_etag else etag
        if combined == known:
            return combined, None
        if body is None:  # the gallery is unchanged, its index is new: the cache needs both
            etag, body = objects.get_if_changed(key, None)
            combined = f"{etag}|{manifest_etag}" if manifest_etag else etag
        if body is None:
            raise StorageError(f"gallery {gallery!r} came back empty")
        if raw is None and manifest_etag:
            raw = objects.get(manifest_key).body
        if raw is None:
            return combined, body
        manifest = AnnManifest.from_json(raw)
        if manifest.gallery_etag != etag:
            return combined, body  # built from another version: exact until rebuilt
        try:
            data = objects.get(manifest.index_key).body
        except ObjectNotFoundError:
            return combined, body
        return combined, AnnPayload(body, etag, manifest, data)

    return load
