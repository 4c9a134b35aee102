"""A small byte-bounded cache of gallery indexes, refreshed by ETag. Torch-free."""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from facegate.errors import FaceGateError, ModelMismatchError, StorageError, ValidationError
from facegate.gallery.ann import AnnPayload
from facegate.gallery.index import GalleryIndex
from facegate.gallery.kernels import _check_dtype, _check_threads
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

#: Default byte budget of a :class:`GalleryCache`: 1 GiB.
DEFAULT_CACHE_BYTES = 1 << 30


# --------------------------------------------------------------------------------------
# GalleryCache
# --------------------------------------------------------------------------------------

#: What a loader may return as the object's content: Parquet bytes, a gallery table, a
#: ready index, a local path, the bytes with their ANN index (:class:`AnnPayload`), or
#: ``None`` for "not modified since ``if_none_match``".
Payload: TypeAlias = (
    "bytes | bytearray | memoryview | pa.Buffer | pa.Table | pa.RecordBatch | GalleryIndex"
    " | AnnPayload | str | os.PathLike[str] | None"
)
#: ``loader(if_none_match) -> (etag, payload)``; ``if_none_match`` is the cached etag or
#: None. A loader taking no argument, ``loader() -> (etag, payload)``, works too. (Both
#: quoted: they are for type checkers, and evaluating them would import pyarrow.)
Loader: TypeAlias = (
    "Callable[[str | None], tuple[str, Payload]] | Callable[[], tuple[str, Payload]]"
)


def _call_loader(loader: Loader, if_none_match: str | None) -> tuple[str, Payload]:
    try:
        params = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume the full form
        return loader(if_none_match)  # type: ignore[call-arg]
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    if any(p.kind in positional for p in params):
        return loader(if_none_match)  # type: ignore[call-arg]
    return loader()  # type: ignore[call-arg]


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache was created (or :meth:`GalleryCache.clear`).

    ``hits``: answered from the cache (including a loader saying "not modified");
    ``misses``: an index was built; ``reloads``: misses that replaced an older version of
    the same object; ``evictions``: entries dropped for space; ``uncacheable``: indexes
    larger than the whole budget, returned but not kept.
    """

    hits: int
    misses: int
    reloads: int
    evictions: int
    uncacheable: int
    entries: int
    nbytes: int
    max_bytes: int

    def to_dict(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "reloads": self.reloads,
            "evictions": self.evictions,
            "uncacheable": self.uncacheable,
            "entries": self.entries,
            "nbytes": self.nbytes,
            "max_bytes": self.max_bytes,
        }


@dataclass
class _Entry:
    etag: str
    index: GalleryIndex
    nbytes: int
    checked_at: float


class GalleryCache:
    """A least-recently-used cache of :class:`GalleryIndex`, bounded by total bytes.

    Entries are keyed by ``(bucket, key, etag)``; at most one version of an object is kept,
    so loading a new etag replaces the old one. The cache does no I/O: :meth:`get` takes a
    ``loader(if_none_match) -> (etag, payload)`` where ``payload`` is the object's bytes
    (Parquet), a gallery table, a :class:`GalleryIndex` or a path, or ``None`` meaning "not
    modified" (only valid when the returned etag is ``if_none_match``). With boto3::

        def s3_loader(s3, bucket, key):
            def load(if_none_match):
                extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
                try:
                    obj = s3.get_object(Bucket=bucket, Key=key, **extra)
                except botocore.exceptions.ClientError as exc:
                    if exc.response["Error"]["Code"] in ("304", "NotModified"):
                        return if_none_match, None
                    raise
                return obj["ETag"], obj["Body"].read()
            return load

        index = cache.get(bucket, key, s3_loader(s3, bucket, key))

    so a warm Lambda pays one conditional request per invocation, not a download. Pass
    ``etag=`` when the current version is already known (an S3 event, a HEAD) and the
    loader is not called at all on a hit; with ``max_age_s`` a cached entry younger than
    that is trusted without asking. A loader may ignore ``if_none_match`` or take no
    argument at all (``loader() -> (etag, payload)``): an unchanged etag still reuses the
    cached index, only the download is not saved.

    ``dtype``, ``expected_model_id`` and ``threads`` apply to every index built here.
    Thread-safe; two threads missing the same object at once may both load it.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        *,
        dtype: Any = np.float32,
        expected_model_id: str | None = None,
        threads: int | None = None,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValidationError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
        if max_age_s is not None and (
            isinstance(max_age_s, bool) or not isinstance(max_age_s, (int, float)) or max_age_s < 0
        ):
            raise ValidationError(f"max_age_s must be a non-negative number, got {max_age_s!r}")
        self._max_bytes = max_bytes
        self._dtype = _check_dtype(dtype)
        self._expected_model_id = expected_model_id
        self._threads = None if threads is None else _check_threads(threads)
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._hits = self._misses = self._reloads = self._evictions = self._uncacheable = 0

    # ------------------------------------------------------------------ lookups

    def get(
        self, bucket: str, key: str, loader: Loader, *, etag: str | None = None
    ) -> GalleryIndex:
        """The index of ``bucket/key``: cached if current, else loaded, built and cached."""
        for name, value in (("bucket", bucket), ("key", key)):
            if not isinstance(value, str) or not value:
                raise ValidationError(f"{name} must be a non-empty string, got {value!r}")
        if etag is not None and (not isinstance(etag, str) or not etag):
            raise ValidationError(f"etag must be a non-empty string, got {etag!r}")
        slot = (bucket, key)
        with self._lock:
            entry = self._entries.get(slot)
            if entry is not None and self._fresh(entry, etag):
                return self._hit(slot, entry, touch=etag is not None)
            known = entry.etag if entry is not None else None

        loaded = _call_loader(loader, known)
        if not isinstance(loaded, tuple) or len(loaded) != 2:
            raise StorageError(f"loader for {bucket}/{key} must return (etag, payload)")
        loaded_etag, payload = loaded
        if not isinstance(loaded_etag, str) or not loaded_etag:
            raise StorageError(f"loader for {bucket}/{key} returned no etag: {loaded_etag!r}")

        with self._lock:
            entry = self._entries.get(slot)
            if entry is not None and entry.etag == loaded_etag:
                return self._hit(slot, entry, touch=True)
        if payload is None:
            raise StorageError(
                f"loader for {bucket}/{key} returned no data for etag {loaded_etag!r}, "
                "and no copy of that version is cached"
            )
        index = self._build(payload, f"{bucket}/{key}")

        with self._lock:
            self._misses += 1
            old = self._entries.pop(slot, None)
            if old is not None:
                self._reloads += 1
                self._nbytes -= old.nbytes
            size = index.nbytes
            if size > self._max_bytes:
                self._uncacheable += 1
                return index
            self._entries[slot] = _Entry(loaded_etag, index, size, self._clock())
            self._nbytes += size
            while self._nbytes > self._max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._nbytes -= dropped.nbytes
                self._evictions += 1
        return index

    def _fresh(self, entry: _Entry, etag: str | None) -> bool:
        if etag is not None:
            return entry.etag == etag
        if self._max_age_s is None:
            return False
        return self._clock() - entry.checked_at <= self._max_age_s

    def _hit(self, slot: tuple[str, str], entry: _Entry, *, touch: bool) -> GalleryIndex:
        self._entries.move_to_end(slot)
        if touch:
            entry.checked_at = self._clock()
        self._hits += 1
        return entry.index

    def _build(self, payload: Payload, name: str) -> GalleryIndex:
        options: dict[str, Any] = {
            "dtype": self._dtype,
            "expected_model_id": self._expected_model_id,
            "threads": self._threads,
        }
        if isinstance(payload, GalleryIndex):
            model = payload.meta.model_id if payload.meta is not None else None
            if self._expected_model_id is not None and model != self._expected_model_id:
                raise ModelMismatchError(
                    f"gallery {name} was built with model {model!r}, "
                    f"expected {self._expected_model_id!r}"
                )
            return payload
        if isinstance(payload, AnnPayload):
            gallery = payload.gallery
            if isinstance(gallery, bytes):
                return payload.attach(GalleryIndex.from_bytes(gallery, **options))
            return payload.attach(GalleryIndex.from_table(gallery, **options))
        if isinstance(payload, (pa.Table, pa.RecordBatch)):
            return GalleryIndex.from_table(payload, **options)
        if isinstance(payload, (bytes, bytearray, memoryview, pa.Buffer)):
            return GalleryIndex.from_bytes(payload, **options)
        if isinstance(payload, (str, os.PathLike)):
            return GalleryIndex.from_parquet(os.fspath(payload), **options)
        raise FaceGateError(f"loader for {name} returned an unusable payload: {type(payload)}")

    # ------------------------------------------------------------------ management

    def peek(self, bucket: str, key: str, etag: str | None = None) -> GalleryIndex | None:
        """The cached index (of version ``etag`` if given), without counting or loading."""
        with self._lock:
            entry = self._entries.get((bucket, key))
            if entry is None or (etag is not None and entry.etag != etag):
                return None
            return entry.index

    def invalidate(self, bucket: str, key: str) -> bool:
        """Drop ``bucket/key``; True if it was cached."""
        with self._lock:
            entry = self._entries.pop((bucket, key), None)
            if entry is None:
                return False
            self._nbytes -= entry.nbytes
            return True

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
            self._reset_counters()

    def entries(self) -> list[tuple[str, str, str]]:
        """``(bucket, key, etag)`` of the entries, least recently used first."""
        with self._lock:
            return [(b, k, e.etag) for (b, k), e in self._entries.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: object) -> bool:
        """``(bucket, key)`` or ``(bucket, key, etag)``."""
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            return False
        with self._lock:
            entry = self._entries.get((item[0], item[1]))
            return entry is not None and (len(item) == 2 or entry.etag == item[2])

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                reloads=self._reloads,
                evictions=self._evictions,
                uncacheable=self._uncacheable,
                entries=len(self._entries),
                nbytes=self._nbytes,
                max_bytes=self._max_bytes,
            )
