"""An approximate (ANN) shortlist for large galleries, on faiss. Torch-free.

Exact 1:N search reads every row: at 10M rows of 256 floats that is 10 GB of memory traffic
per query. Past :data:`ANN_MIN_ROWS` rows a gallery can carry a faiss index that proposes a
shortlist of rows: an inverted file of product-quantised codes scanned with faiss's SIMD
"fast scan" (``IVF<nlist>,PQ<D/4>x4fs``: 32 bytes a row for 256 dims, an HNSW coarse
quantiser for the largest). :class:`~facegate.gallery.index.GalleryIndex` then rescores the
shortlist exactly from its own matrix, so every similarity a caller sees is the exact one and
only the choice of candidates is approximate.

Measured (``bench/ann_bench.py``, galleries drawn from a model of real LFW embeddings): face
embeddings have no cluster structure for an inverted file to exploit, so recall follows the
share of the lists probed. Probing an eighth of them finds the exact top subject for 99.5%
of genuine probes at 1M rows (1.9 ms p50) and for all 200 at 10M (7.2 ms, against 834 ms
exact); an 8-bit scalar quantiser (``SQ8``) needed 6x the memory and 4x the time for the same
recall at 1M.

The index is a separate object beside ``gallery.parquet`` (``galleries/<g>/ann/<sha256>.faiss``)
described by a manifest (``galleries/<g>/ann.json``, :class:`AnnManifest`) that names the
gallery version it was built from (its ETag and row count). A reader uses the index only when
that version is the one it loaded: a gallery compacted or erased since is searched exactly
until its index is rebuilt, never through rows that no longer match. A gallery without an
index is searched exactly, as before.

faiss is imported only here, and only when an index is built or loaded (0.5 s, 41 MB).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.common import utc_now
from facegate.errors import ModelMismatchError, StorageError, ValidationError

if TYPE_CHECKING:
    import pyarrow as pa

    from facegate.gallery.index import GalleryIndex

#: Below this many rows exact search is fast enough (1M rows float32: ~50 ms) and needs no
#: index; set-ups may lower it (``facegate gallery index --min-rows``).
ANN_MIN_ROWS = 1_000_000
#: Rows proposed for exact rescoring (widened when they hold fewer than ``k`` subjects).
DEFAULT_SHORTLIST = 1024
#: The manifest's format; a reader refuses any other.
MANIFEST_FORMAT = 1
#: Past this many lists the coarse quantiser is an HNSW graph: assigning 10M rows to 4,096
#: flat centroids costs 10M x 4,096 dot products, to an HNSW graph a few dozen each.
_HNSW_MIN_LISTS = 2048
#: faiss's k-means wants at least 39 training points per list; more buys little.
_TRAIN_PER_LIST = 64
_MIN_PER_LIST = 39
#: The fewest rows an index is built for: below, exact search is microseconds anyway.
MIN_INDEX_ROWS = 1000


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a serving dependency
        raise StorageError("an ANN gallery index needs faiss-cpu installed") from exc
    return faiss


@dataclass(frozen=True)
class AnnParams:
    """How an index is built and searched: a faiss ``index_factory`` string (inner product),
    the lists probed per query, and the rows rescored exactly."""

    factory: str
    nprobe: int
    shortlist: int = DEFAULT_SHORTLIST

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.startswith("IVF"):
            raise ValidationError(f"ANN factory must be an IVF index, got {self.factory!r}")
        for name in ("nprobe", "shortlist"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"ANN {name} must be a positive int, got {value!r}")

    @classmethod
    def for_rows(cls, rows: int, dim: int, *, nprobe: int | None = None) -> AnnParams:
        """About ``sqrt(rows)`` lists (a power of two, 16 to 16,384) of 4-bit PQ codes, one
        sub-quantiser per 4 dims; probing an eighth of the lists (at least 8)."""
        nlist = 1 << max(4, min(14, round(math.log2(max(math.sqrt(rows), 1.0)))))
        while nlist > 1 and nlist * _MIN_PER_LIST > rows:
            nlist //= 2  # a small gallery: every list trained on enough rows
        coarse = f"IVF{nlist}_HNSW32" if nlist >= _HNSW_MIN_LISTS else f"IVF{nlist}"
        return cls(f"{coarse},PQ{max(1, dim // 4)}x4fs", nprobe or max(8, nlist // 8))

    @property
    def nlist(self) -> int:
        head = self.factory.split(",", 1)[0].removeprefix("IVF")
        return int(head.split("_", 1)[0])


class AnnIndex:
    """A faiss index over a gallery's rows (ids are row numbers), searched for shortlists."""

    def __init__(self, index: Any, params: AnnParams) -> None:
        self._index = index
        self.params = params
        self._nbytes: int | None = None
        self._set_nprobe(params.nprobe)

    def _set_nprobe(self, nprobe: int) -> None:
        """Probe ``nprobe`` lists; an HNSW coarse quantiser must then explore at least twice
        as many candidates (its default of 16 would return fewer, nearer-miss lists:
        measured, recall@1 0.965 instead of 0.99 at 1M rows)."""
        faiss = _faiss()
        ivf = faiss.extract_index_ivf(self._index)
        ivf.nprobe = nprobe
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, 2 * nprobe)

    @property
    def n_rows(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def nbytes(self) -> int:
        """The index's size serialised (codes, ids, quantisers): what it holds in memory."""
        if self._nbytes is None:
            self._nbytes = len(self.to_bytes())
        return self._nbytes

    @classmethod
    def build(
        cls,
        blocks: Iterable[np.ndarray],
        rows: int,
        dim: int,
        params: AnnParams,
        *,
        seed: int = 0,
    ) -> AnnIndex:
        """Train on a seeded random sample of the rows, then add them all, block by block
        (float16 or float32 blocks, in row order), so peak memory is the codes plus a block.

        ``blocks`` is iterated twice when it is a list (sample, then add); pass a list or a
        re-iterable."""
        faiss = _faiss()
        chunks = list(blocks) if not isinstance(blocks, list) else blocks
        if sum(len(b) for b in chunks) != rows:
            raise ValidationError(f"ANN build: the blocks do not hold {rows} rows")
        if rows < max(MIN_INDEX_ROWS, params.nlist * _MIN_PER_LIST):
            raise ValidationError(
                f"ANN build: {rows} rows are too few for an index of {params.nlist} lists "
                f"(at least {max(MIN_INDEX_ROWS, params.nlist * _MIN_PER_LIST)}); "
                "exact search serves them"
            )
        index = faiss.index_factory(dim, params.factory, faiss.METRIC_INNER_PRODUCT)
        train_rows = min(rows, _TRAIN_PER_LIST * params.nlist)
        wanted = np.sort(np.random.default_rng(seed).choice(rows, size=train_rows, replace=False))
        sample, start = [], 0
        for block in chunks:
            stop = start + len(block)
            lo, hi = np.searchsorted(wanted, [start, stop])
            if hi > lo:
                sample.append(np.asarray(block[wanted[lo:hi] - start], dtype=np.float32))
            start = stop
        index.train(np.concatenate(sample))
        start = 0
        for block in chunks:
            f32 = np.ascontiguousarray(block, dtype=np.float32)
            index.add_with_ids(f32, np.arange(start, start + len(f32), dtype=np.int64))
            start += len(f32)
        return cls(index, params)

    def to_bytes(self) -> bytes:
        return bytes(_faiss().serialize_index(self._index))

    @classmethod
    def from_bytes(cls, data: bytes, params: AnnParams) -> AnnIndex:
        faiss = _faiss()
        ann = cls(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), params)
        ann._nbytes = len(data)
        return ann

    def shortlist(self, query: np.ndarray, count: int) -> np.ndarray:
        """Up to ``count`` row numbers, by approximate similarity (no -1 padding)."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        _, ids = self._index.search(q, min(count, self.n_rows))
        found: np.ndarray = ids[0]
        return found[found >= 0]


@dataclass(frozen=True)
class AnnManifest:
    """``galleries/<g>/ann.json``: which index serves which version of ``gallery.parquet``."""

    gallery_etag: str
    gallery_rows: int
    model_id: str
    dim: int
    params: AnnParams
    index_key: str
    index_sha256: str
    index_bytes: int
    build_s: float
    built_at: str = field(default_factory=utc_now)
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> AnnManifest:
        try:
            doc = json.loads(raw)
            if doc.get("format") != MANIFEST_FORMAT:
                raise ValidationError(f"ANN manifest format {doc.get('format')!r} is not 1")
            return cls(**{**doc, "params": AnnParams(**doc["params"])})
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise StorageError("the gallery's ANN manifest cannot be read") from exc

    def serves(self, etag: str, rows: int, model_id: str | None) -> bool:
        """Whether this index was built from the gallery version ``etag`` of ``rows`` rows."""
        if model_id is not None and model_id != self.model_id:
            raise ModelMismatchError(
                f"the gallery's ANN index was built for {self.model_id!r}, not {model_id!r}"
            )
        return self.gallery_etag == etag and self.gallery_rows == rows

    def check(self, data: bytes) -> None:
        """The index object is the one the manifest names (its sha256)."""
        if hashlib.sha256(data).hexdigest() != self.index_sha256:
            raise StorageError("the gallery's ANN index does not match its manifest")


@dataclass(frozen=True)
class AnnPayload:
    """What a gallery loader returns for a gallery with a current index: the gallery (its
    Parquet bytes, or the table of its merged generations), the manifest and the index bytes
    (checked against the manifest when the cache builds)."""

    gallery: bytes | pa.Table
    etag: str
    manifest: AnnManifest
    index: bytes
    #: A gallery served with a delta on top of its base (:attr:`gallery` is then the merged
    #: table): the base's row count, which the index was built over, and the rows the
    #: delta put in (each search rescores them too).
    base_rows: int | None = None
    delta_rows: np.ndarray | None = None

    def attach(self, gallery: GalleryIndex) -> GalleryIndex:
        """``gallery`` (built from :attr:`gallery`) searched through the index, or exactly
        when the manifest names another version of the gallery."""
        model = gallery.meta.model_id if gallery.meta is not None else None
        rows = gallery.n_rows if self.base_rows is None else self.base_rows
        if not self.manifest.serves(self.etag, rows, model):
            return gallery
        self.manifest.check(self.index)
        ann = AnnIndex.from_bytes(self.index, self.manifest.params)
        return gallery.with_ann(ann, always=self.delta_rows)


def timed_build(
    blocks: list[np.ndarray], rows: int, dim: int, params: AnnParams
) -> tuple[AnnIndex, bytes, float]:
    """Build, serialise and time an index: what a manifest records."""
    started = time.perf_counter()
    index = AnnIndex.build(blocks, rows, dim, params)
    data = index.to_bytes()
    return index, data, time.perf_counter() - started
