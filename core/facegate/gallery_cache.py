"""A gallery loaded once and searched many times, and a small cache of them. Torch-free.

:func:`facegate.search.search_gallery` takes a table and pays, on every call, for what does
not change between calls: concatenating the embedding column when the table has several
chunks (a Parquet file with several row groups), a Python-level subject lookup, and the
scoring itself in ``einsum`` (deterministic per row, but slower than BLAS).
:class:`GalleryIndex` pays for those once, at load:

- the embeddings are one contiguous ``(N, D)`` matrix, float32 or float16 (half the
  memory; scored by converting blocks that fit in L2 to float32, see below);
- subject ids are dictionary-encoded: an ``int32`` code per row and one string per
  subject, so per-subject aggregation is integer work (``np.unique`` on a few codes);
- image keys stay an Arrow string array: ``k`` lookups per search, no Python strings.

**Same answers as** :func:`~facegate.search.search_gallery`. A search scans every row with
BLAS (a float32 ``gemv``), then rescores the candidates with
:func:`~facegate.search.row_similarities`, the reference per-row arithmetic, and ranks by
(similarity descending, row ascending). BLAS and ``einsum`` may differ in the last bits, so
the candidates are all rows whose BLAS score is within a proven error bound of the k-th
best: a float32 dot product of ``D`` terms is within ``gamma_D * ||e|| * ||q||`` of the
exact one, ``gamma_D = D u / (1 - D u)``, ``u = 2**-24``, whatever the summation order, so
every row that the reference ranks in the top ``k`` is among them (see :meth:`_margin`). On
a float32 index the result is therefore the reference's, similarities bit for bit.

**Scanning.** Rows are scored in blocks of about 1 MiB (2048 rows of 128-d): small enough
for L2 and for OpenBLAS to run each ``gemv`` on the calling thread, because a ``gemv`` that
starts BLAS threads waits for all of them, and on a busy 2-CPU machine that wait cost
5-8 ms per call (measured; the whole 10k-row scan takes 0.1 ms). With several CPUs
(``threads``) the caller and pool threads claim runs of blocks from a shared counter and
the caller never waits for a thread that has not started (:func:`_run_blocks`).

**float16.** Storage is rounded to float16 (relative error <= 2**-11 per component, so a
similarity of unit vectors moves by at most 2**-11 ~ 4.9e-4) and float16 subnormals
(``|x| < 2**-14``) are flushed to zero at load, which moves it by less than ``2**-14``
times the query's mass on those components (~1e-5). Scores are computed in float32: each
block is widened with two integer operations (the float16 bits shifted into float32
position, which is the value times ``2**-112``, exact because no subnormal is left) and the
query is scaled by ``2**112`` instead, so the products are exactly those of a float32
conversion. NumPy's own float16 -> float32 cast runs about 1.3 ns per element here, more
than the whole float32 scan; the float16 scan still costs about twice the float32 one.

:class:`GalleryCache` keeps recently used indexes, least recently used evicted first when
their total size passes a byte budget, keyed by ``(bucket, key, etag)``: a warm Lambda
reuses a gallery between invocations and reloads it when the object changes. It does no
I/O itself; the caller injects a loader (for S3, a conditional ``GetObject``).

This module must never import torch, directly or indirectly.
"""

from __future__ import annotations

import inspect
import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from facegate.errors import FaceGateError, ModelMismatchError, StorageError, ValidationError
from facegate.gallery import (
    METADATA_KEY,
    GalleryMeta,
    Source,
    gallery_embeddings,
    gallery_meta_from_schema,
    open_gallery,
)
from facegate.search import (
    DEFAULT_K,
    Match,
    SearchResult,
    check_k,
    check_query,
    check_threshold,
    row_similarities,
)

#: Default byte budget of a :class:`GalleryCache`: 1 GiB.
DEFAULT_CACHE_BYTES = 1 << 30
#: Rows per batch when loading a Parquet gallery: memory beyond the matrix is one batch.
LOAD_BATCH_ROWS = 65536
#: float32 bytes per widened float16 block: fits a 2 MiB L2 with room for the rest.
BLOCK_BYTES = 1 << 20
#: Below this many rows a thread pool costs more than it saves.
PARALLEL_MIN_ROWS = 1 << 15
#: Per-subject search widens its candidate rows straight to the number that guarantees k
#: subjects when that number is at most this; beyond it (a subject with very many rows) it
#: widens geometrically, like ``search_gallery``.
_DIRECT_WIDEN_ROWS = 1 << 16

_DTYPES = {np.dtype(np.float32), np.dtype(np.float16)}
_UNIT_ROUNDOFF = 2.0**-24  # float32
#: float16 bits << 13, masked to sign + exponent + mantissa, read as float32 = value * 2**-112.
_F16_MASK = np.int32(-0x70002000)  # 0x8FFFE000
_F16_SHIFT = 13
_F16_SCALE = np.float32(2.0**112)
_F16_EXPONENT_BITS = np.uint16(0x7C00)
_F16_MAX = 65504.0
#: Rows longer than this would overflow float32 when squared (a unit vector has norm 1).
_F32_SAFE_NORM = 1e18


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValidationError(f"dtype must be float32 or float16, got {dtype!r}") from exc
    if dt not in _DTYPES:
        raise ValidationError(f"dtype must be float32 or float16, got {dt}")
    return dt


def _check_threads(threads: Any) -> int:
    if threads is None:
        try:
            available = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            available = os.cpu_count() or 1
        return max(1, min(4, available))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValidationError(f"threads must be a positive int, got {threads!r}")
    return threads


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="facegate")
        return pool


def f16_to_scaled_f32(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float16 ``src`` widened into int32 ``out`` (same shape); returns ``out`` as float32.

    The result is ``src * 2**-112`` exactly for zeros and normal float16 values (multiply
    by ``2**112``, or scale the other operand, to get the values); float16 subnormals
    would become float32 subnormals, which is why :class:`GalleryIndex` flushes them.
    Two integer passes instead of NumPy's scalar half-float cast.
    """
    np.left_shift(src.view(np.int16), _F16_SHIFT, out=out, dtype=np.int32)
    np.bitwise_and(out, _F16_MASK, out=out)
    return out.view(np.float32)


def _block_rows(dim: int) -> int:
    return max(64, BLOCK_BYTES // (4 * dim))


_SCRATCH = threading.local()


def _scratch(rows: int, dim: int) -> np.ndarray:
    """A per-thread ``(rows, dim) int32`` buffer for widening float16 blocks, reused."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.shape != (rows, dim):
        buf = _SCRATCH.buf = np.empty((rows, dim), dtype=np.int32)
    return buf


def _run_blocks(n: int, block: int, work: Callable[[int, int], None], workers: int) -> None:
    """``work(start, stop)`` for every ``block``-row slice of ``n`` rows.

    Blocks stay below the size at which OpenBLAS starts its own threads for a ``gemv``
    (about 460k elements in 0.3.x), so no call waits for a BLAS thread that the OS has not
    scheduled: on a busy 2-CPU machine that wait was 5-8 ms per call, 50x a 10k-row scan.
    With ``workers > 1`` the caller and ``workers - 1`` pool threads claim runs of blocks
    from a shared counter, and the caller waits for claimed runs only, never for a pool
    thread that has not started: a late thread finds nothing left and returns.
    """
    n_blocks = -(-n // block)
    if workers <= 1 or n_blocks <= 1:
        for start in range(0, n, block):
            work(start, min(n, start + block))
        return
    per_claim = max(1, n_blocks // (4 * workers))
    n_claims = -(-n_blocks // per_claim)
    claims = itertools.count()
    lock = threading.Lock()
    finished = threading.Event()
    done = [0]
    errors: list[BaseException] = []

    def run() -> None:
        while (claim := next(claims)) < n_claims:
            try:
                for b in range(claim * per_claim, min(n_blocks, (claim + 1) * per_claim)):
                    work(b * block, min(n, (b + 1) * block))
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)
            with lock:
                done[0] += 1
                if done[0] == n_claims:
                    finished.set()

    pool = _pool(workers - 1)
    for _ in range(workers - 1):
        try:
            pool.submit(run)
        except RuntimeError:  # interpreter shutting down: the caller does it all
            break
    run()
    finished.wait()
    if errors:
        raise errors[0]


def _string_array(values: Any, name: str, n: int) -> pa.Array:
    """Strings (a sequence, NumPy array or Arrow array/chunked array) as one Arrow array."""
    if isinstance(values, pa.ChunkedArray):
        arr = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    elif isinstance(values, pa.Array):
        arr = values
    else:
        try:
            arr = pa.array(np.asarray(values, dtype=object), type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise ValidationError(f"{name} must be strings", detail=str(exc)) from exc
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise ValidationError(f"{name} must be strings, got {arr.type}")
    if arr.null_count:
        raise ValidationError(f"{name} must not contain nulls")
    if len(arr) != n:
        raise ValidationError(f"{name} has {len(arr)} rows, expected {n}")
    return arr


class _MatrixBuilder:
    """Fills a preallocated ``(rows, dim)`` matrix block by block, checking as it goes.

    Each block is checked once: finite (a squared norm that is not finite means a NaN, an
    infinity or a value too large to score) and its largest row norm, which bounds the
    rounding error of every score (:meth:`GalleryIndex._margin`).
    """

    def __init__(self, rows: int, dim: int, dtype: np.dtype) -> None:
        self.matrix = np.empty((rows, dim), dtype=dtype)
        self.filled = 0
        self.max_norm = 0.0

    def add(self, block: np.ndarray) -> None:
        m = block.shape[0]
        if self.filled + m > self.matrix.shape[0]:
            raise ValidationError(f"gallery has more rows than the {self.matrix.shape[0]} expected")
        for start in range(0, m, LOAD_BATCH_ROWS):
            src = block[start : start + LOAD_BATCH_ROWS]
            dst = self.matrix[self.filled : self.filled + src.shape[0]]
            norm = _max_row_norm(src, self.filled)
            if norm > (_F16_MAX if dst.dtype == np.float16 else _F32_SAFE_NORM):
                raise ValidationError(
                    f"gallery embeddings are too large for {dst.dtype}", detail=f"norm {norm}"
                )
            if dst.dtype == np.float16:
                np.copyto(dst, src, casting="same_kind")
                bits = dst.view(np.uint16)
                bits[(bits & _F16_EXPONENT_BITS) == 0] = 0  # subnormals (and -0) to +0
                norm *= 1.0 + 2.0**-10  # float16 rounding moves a norm by <= 2**-11
            else:
                np.copyto(dst, src, casting="same_kind")
            self.max_norm = max(self.max_norm, norm)
            self.filled += src.shape[0]

    def finish(self) -> np.ndarray:
        if self.filled != self.matrix.shape[0]:
            raise ValidationError(
                f"gallery has {self.filled} rows but its metadata says {self.matrix.shape[0]}"
            )
        return self.matrix


def _max_row_norm(block: np.ndarray, first_row: int = 0) -> float:
    if block.shape[0] == 0:
        return 0.0
    if block.dtype.itemsize < 4:  # float16 input: square and sum in float32
        block = block.astype(np.float32)
    sq = np.einsum("ij,ij->i", block, block)
    finite = np.isfinite(sq)
    if not finite.all():
        bad = np.flatnonzero(~finite)[:10] + first_row
        raise ValidationError(
            "gallery embeddings contain non-finite (or overflowing) values",
            detail=f"rows {bad.tolist()}",
        )
    return float(np.sqrt(float(sq.max()))) * (1.0 + 1e-6)


def _table_embedding_blocks(table: pa.Table) -> list[np.ndarray]:
    """The embedding column as zero-copy ``(n_i, D) float32`` views, one per record batch."""
    return [gallery_embeddings(batch) for batch in table.to_batches()]


# --------------------------------------------------------------------------------------
# GalleryIndex
# --------------------------------------------------------------------------------------


class GalleryIndex:
    """A gallery held for repeated exact searches; see the module docstring.

    Build it with :meth:`from_parquet` (a path or file; streams row groups into the matrix,
    so peak memory is the matrix plus one batch), :meth:`from_bytes` (an object body),
    :meth:`from_table`, or the constructor from arrays:

    - ``embeddings (N, D)``: finite floats, normally unit vectors (as the gallery format
      guarantees); not renormalised.
    - ``subject_ids (N,)``, ``image_keys (N,)`` (optional): strings, no nulls.
    - ``threshold``: default decision threshold; else the one in ``meta``; else every
      :meth:`search` must pass one.
    - ``dtype``: ``"float32"`` (default; results equal :func:`search_gallery`'s) or
      ``"float16"`` (half the memory; similarities within ~1e-3).
    - ``threads``: threads scanning a gallery of at least ``PARALLEL_MIN_ROWS`` rows, the
      caller included (default: available CPUs, at most 4).
    - ``copy``: a float32 C-contiguous array is used as is (not copied) unless ``copy``.

    Instances are immutable after construction and safe to search from several threads.
    """

    def __init__(
        self,
        embeddings: Any,
        subject_ids: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray,
        image_keys: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray | None = None,
        *,
        threshold: float | None = None,
        meta: GalleryMeta | None = None,
        dtype: Any = np.float32,
        threads: int | None = None,
        copy: bool = False,
    ) -> None:
        dt = _check_dtype(dtype)
        emb = np.asarray(embeddings)
        if emb.ndim != 2:
            raise ValidationError(f"gallery embeddings must be (N, D), got shape {emb.shape}")
        if not (np.issubdtype(emb.dtype, np.floating) or emb.size == 0):
            raise ValidationError(f"gallery embeddings must be floating point, got {emb.dtype}")
        if emb.shape[1] == 0:
            raise ValidationError("gallery embeddings have dim 0")
        if meta is not None and emb.shape[1] != meta.dim:
            raise ModelMismatchError(
                f"gallery embeddings have dim {emb.shape[1]}, metadata says {meta.dim}"
            )
        n = emb.shape[0]
        subjects = _string_array(subject_ids, "subject_ids", n)
        keys = None if image_keys is None else _string_array(image_keys, "image_keys", n)
        matrix, max_norm = self._matrix_from_blocks([emb], n, emb.shape[1], dt, copy)
        self._setup(matrix, max_norm, subjects, keys, meta, threshold, threads)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _matrix_from_blocks(
        blocks: list[np.ndarray], n: int, dim: int, dtype: np.dtype, copy: bool
    ) -> tuple[np.ndarray, float]:
        if (
            not copy
            and dtype == np.float32
            and len(blocks) == 1
            and blocks[0].dtype == np.float32
            and blocks[0].flags.c_contiguous
        ):
            only = blocks[0]
            norm = 0.0
            for start in range(0, n, LOAD_BATCH_ROWS):
                norm = max(norm, _max_row_norm(only[start : start + LOAD_BATCH_ROWS], start))
            view = only.view()
            view.flags.writeable = False
            return view, norm
        builder = _MatrixBuilder(n, dim, dtype)
        for block in blocks:
            builder.add(block)
        matrix = builder.finish()
        matrix.flags.writeable = False
        return matrix, builder.max_norm

    def _setup(
        self,
        matrix: np.ndarray,
        max_norm: float,
        subjects: pa.Array,
        keys: pa.Array | None,
        meta: GalleryMeta | None,
        threshold: float | None,
        threads: int | None,
    ) -> None:
        self._matrix = matrix
        self._max_norm = max_norm
        self._meta = meta
        if threshold is None and meta is not None:
            threshold = meta.threshold
        self._threshold = None if threshold is None else check_threshold(threshold)
        self._threads = _check_threads(threads)
        encoded = subjects.dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        self._codes = np.ascontiguousarray(codes, dtype=np.int32)
        self._codes.flags.writeable = False
        self._subject_names: pa.Array = encoded.dictionary
        self._max_rows_per_subject = int(np.bincount(self._codes).max()) if self._codes.size else 0
        self._image_keys = keys

    @classmethod
    def from_table(
        cls,
        table: pa.Table | pa.RecordBatch,
        *,
        dtype: Any = np.float32,
        expected_model_id: str | None = None,
        threshold: float | None = None,
        threads: int | None = None,
        copy: bool = False,
    ) -> GalleryIndex:
        """From an in-memory gallery table (:func:`facegate.gallery.read_gallery`).

        A table with gallery metadata is checked against it (model id, columns, row count);
        one without (``subject_id`` and ``embedding`` columns, ``image_key`` optional)
        needs a threshold here or at search. A single-chunk float32 column is used without
        copying (read-only); anything else is copied once, chunk by chunk.
        """
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        meta = None
        if METADATA_KEY in (table.schema.metadata or {}):
            meta = gallery_meta_from_schema(table.schema, expected_model_id)
            if table.num_rows != meta.row_count:
                raise ValidationError(
                    f"gallery has {table.num_rows} rows but its metadata says {meta.row_count}"
                )
        elif expected_model_id is not None:
            raise ValidationError("table has no gallery metadata to check the model id against")
        names = table.schema.names
        for needed in ("subject_id", "embedding"):
            if needed not in names:
                raise ValidationError(f"gallery table has no {needed!r} column")
        blocks = _table_embedding_blocks(table)
        typ = table.schema.field("embedding").type
        dim = typ.list_size if pa.types.is_fixed_size_list(typ) else 0
        n = table.num_rows
        subjects = _string_array(table.column("subject_id"), "subject_id", n)
        keys = (
            _string_array(table.column("image_key"), "image_key", n)
            if "image_key" in names
            else None
        )
        matrix, max_norm = cls._matrix_from_blocks(blocks, n, dim, _check_dtype(dtype), copy)
        index = cls.__new__(cls)
        index._setup(matrix, max_norm, subjects, keys, meta, threshold, threads)
        return index

    @classmethod
    def from_parquet(
        cls,
        source: Source,
        *,
        dtype: Any = np.float32,
        expected_model_id: str | None = None,
        threshold: float | None = None,
        threads: int | None = None,
    ) -> GalleryIndex:
        """From a gallery file, streamed batch by batch into the matrix.

        The footer is checked first (metadata, model id, schema, row count), so a wrong or
        truncated gallery is refused before its rows are read. Raises like
        :func:`facegate.gallery.read_gallery`.
        """
        dt = _check_dtype(dtype)
        meta, pf = open_gallery(source, expected_model_id)
        if pf.metadata.num_rows != meta.row_count:
            raise ValidationError(
                f"gallery has {pf.metadata.num_rows} rows but its metadata says {meta.row_count}"
            )
        builder = _MatrixBuilder(meta.row_count, meta.dim, dt)
        subjects: list[pa.Array] = []
        keys: list[pa.Array] = []
        try:
            for batch in pf.iter_batches(
                batch_size=LOAD_BATCH_ROWS, columns=["subject_id", "image_key", "embedding"]
            ):
                builder.add(gallery_embeddings(batch))
                subjects.append(batch.column("subject_id"))
                keys.append(batch.column("image_key"))
        except OSError as exc:
            raise StorageError(f"cannot read gallery {source!r}", detail=str(exc)) from exc
        except pa.ArrowException as exc:
            raise ValidationError(f"corrupt gallery {source!r}", detail=str(exc)) from exc
        matrix = builder.finish()
        matrix.flags.writeable = False
        n = meta.row_count
        index = cls.__new__(cls)
        index._setup(
            matrix,
            builder.max_norm,
            _string_array(pa.chunked_array(subjects, pa.string()), "subject_id", n),
            _string_array(pa.chunked_array(keys, pa.string()), "image_key", n),
            meta,
            threshold,
            threads,
        )
        return index

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview | pa.Buffer,
        *,
        dtype: Any = np.float32,
        expected_model_id: str | None = None,
        threshold: float | None = None,
        threads: int | None = None,
    ) -> GalleryIndex:
        """From a gallery file's bytes (an S3 object body), without copying them first."""
        return cls.from_parquet(
            pa.BufferReader(data),
            dtype=dtype,
            expected_model_id=expected_model_id,
            threshold=threshold,
            threads=threads,
        )

    # ------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return self._matrix.shape[0]

    @property
    def n_rows(self) -> int:
        return self._matrix.shape[0]

    @property
    def dim(self) -> int:
        return self._matrix.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self._matrix.dtype

    @property
    def meta(self) -> GalleryMeta | None:
        return self._meta

    @property
    def threshold(self) -> float | None:
        return self._threshold

    @property
    def n_subjects(self) -> int:
        return len(self._subject_names)

    @property
    def embeddings(self) -> np.ndarray:
        """The ``(N, D)`` matrix, read-only, in the index's dtype."""
        return self._matrix

    @property
    def subject_codes(self) -> np.ndarray:
        """``(N,) int32``: row ``i`` belongs to ``subject_names[subject_codes[i]]``."""
        return self._codes

    @property
    def subject_names(self) -> pa.Array:
        return self._subject_names

    @property
    def image_keys(self) -> pa.Array | None:
        return self._image_keys

    @property
    def matrix_nbytes(self) -> int:
        return int(self._matrix.nbytes)

    @property
    def nbytes(self) -> int:
        """Memory held: the matrix, the subject codes and names, the image keys."""
        total = self._matrix.nbytes + self._codes.nbytes + self._subject_names.nbytes
        if self._image_keys is not None:
            total += self._image_keys.nbytes
        return int(total)

    def __repr__(self) -> str:
        model = self._meta.model_id if self._meta is not None else None
        return (
            f"GalleryIndex(rows={self.n_rows}, dim={self.dim}, dtype={self.dtype}, "
            f"subjects={self.n_subjects}, model={model!r}, nbytes={self.nbytes})"
        )

    # ------------------------------------------------------------------ search

    def search(
        self,
        query: Any,
        k: int = DEFAULT_K,
        threshold: float | None = None,
        *,
        per_subject: bool = True,
    ) -> SearchResult:
        """Search one query ``(D,)``; the same contract as :func:`search_gallery`.

        With ``per_subject`` (default) a subject's best row counts once. ``threshold``
        defaults to the index's. Raises :class:`ModelMismatchError` for a query of another
        dim and :class:`ValidationError` for a bad ``k``, threshold or query.
        """
        k = check_k(k)
        threshold = check_threshold(self._threshold if threshold is None else threshold)
        q = check_query(query, self.dim)
        if self.n_rows == 0:
            return SearchResult(candidates=(), threshold=threshold)
        scanned = self._scan(q)
        if per_subject:
            rows, sims = self._best_subject_rows(q, scanned, k)
        else:
            rows, sims = self._exact_top(q, scanned, min(k, self.n_rows))
        return self._result(rows, sims, threshold)

    def scores(self, query: Any) -> np.ndarray:
        """Every row's similarity to ``query`` as scanned (BLAS): ``(N,) float32``.

        Within the :meth:`_margin` bound of :func:`~facegate.search.row_similarities`, not
        bit-equal to it; for analysis, not for decisions.
        """
        return self._scan(check_query(query, self.dim))

    def _scan(self, q: np.ndarray) -> np.ndarray:
        """Every row's BLAS score, block by block (see :func:`_run_blocks`)."""
        n = self.n_rows
        out = np.empty(n, dtype=np.float32)
        matrix = self._matrix
        block = _block_rows(self.dim)
        if matrix.dtype == np.float32:

            def work(start: int, stop: int) -> None:
                np.matmul(matrix[start:stop], q, out=out[start:stop])

        else:
            scaled = q * _F16_SCALE  # exact: a power of two, far from overflow for |q_j| ~ 1

            def work(start: int, stop: int) -> None:
                buf = _scratch(block, self.dim)[: stop - start]
                np.matmul(f16_to_scaled_f32(matrix[start:stop], buf), scaled, out=out[start:stop])

        _run_blocks(n, block, work, self._threads if n >= PARALLEL_MIN_ROWS else 1)
        return out

    def _margin(self, q: np.ndarray) -> float:
        """How far below the k-th scanned score a row may be and still be in the top k.

        Scan (BLAS) and reference (``einsum``) each lie within ``gamma_D * ||e|| * ||q||``
        of the exact dot product, so they differ by at most ``eps = 2 gamma_D ||e|| ||q||``.
        The k rows with scanned scores >= ``b_k`` have reference scores >= ``b_k - eps``,
        so any row in the reference top k has reference >= ``b_k - eps`` and scanned
        >= ``b_k - 2 eps``. Doubled again for safety, plus an absolute term for products
        that underflow.
        """
        d = self.dim
        gamma = d * _UNIT_ROUNDOFF / (1.0 - d * _UNIT_ROUNDOFF)
        qnorm = float(np.sqrt(np.dot(q.astype(np.float64), q.astype(np.float64))))
        return 8.0 * gamma * self._max_norm * qnorm + d * 2.0**-126

    def _rescore(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        picked = self._matrix[rows]
        if picked.dtype != np.float32:
            picked = picked.astype(np.float32)
        return row_similarities(q, picked)

    def _exact_top(
        self, q: np.ndarray, scanned: np.ndarray, take: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``take`` rows by (reference similarity desc, row asc), with those scores."""
        n = scanned.shape[0]
        if take >= n:
            candidates = np.arange(n, dtype=np.int64)
        else:
            kth = np.partition(scanned, n - take)[n - take]
            candidates = np.flatnonzero(scanned >= kth - self._margin(q))
        sims = self._rescore(q, candidates)
        order = np.lexsort((candidates, -sims))[:take]
        return candidates[order], sims[order]

    def _best_subject_rows(
        self, q: np.ndarray, scanned: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each of the best ``k`` subjects' best row, ranked as ``search_gallery`` ranks.

        The top ``t`` rows hold at least ``ceil(t / m)`` subjects when no subject has more
        than ``m`` rows, so after a first try with ``k`` rows one widening to
        ``(k - 1) m + 1`` rows is enough (geometric widening when that is huge).
        """
        n = scanned.shape[0]
        want = min(k, self.n_subjects)
        take = min(k, n)
        while True:
            rows, sims = self._exact_top(q, scanned, take)
            _, first = np.unique(self._codes[rows], return_index=True)
            if first.size >= want or take >= n:
                break
            enough = (want - 1) * self._max_rows_per_subject + 1
            take = min(n, enough if enough <= max(4 * take, _DIRECT_WIDEN_ROWS) else 4 * take)
        keep = np.sort(first)[:want]
        return rows[keep], sims[keep]

    def _result(self, rows: np.ndarray, sims: np.ndarray, threshold: float) -> SearchResult:
        if rows.size == 0:
            return SearchResult(candidates=(), threshold=threshold)
        codes = pa.array(self._codes[rows], type=pa.int32())
        subjects = self._subject_names.take(codes).to_pylist()
        if self._image_keys is not None:
            keys = self._image_keys.take(pa.array(rows, type=pa.int64())).to_pylist()
        else:
            keys = [None] * rows.size
        return SearchResult(
            candidates=tuple(
                Match(subject, key, sim, rank, row)
                for rank, (subject, key, sim, row) in enumerate(
                    zip(subjects, keys, sims.tolist(), rows.tolist(), strict=True), start=1
                )
            ),
            threshold=threshold,
        )


# --------------------------------------------------------------------------------------
# GalleryCache
# --------------------------------------------------------------------------------------

#: What a loader may return as the object's content: Parquet bytes, a gallery table, a
#: ready index, a local path, or ``None`` for "not modified since ``if_none_match``".
Payload = (
    bytes
    | bytearray
    | memoryview
    | pa.Buffer
    | pa.Table
    | pa.RecordBatch
    | GalleryIndex
    | str
    | os.PathLike
    | None
)
#: ``loader(if_none_match) -> (etag, payload)``; ``if_none_match`` is the cached etag or
#: None. A loader taking no argument, ``loader() -> (etag, payload)``, works too.
Loader = Callable[[str | None], tuple[str, Payload]] | Callable[[], tuple[str, Payload]]


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
        if isinstance(payload, (pa.Table, pa.RecordBatch)):
            return GalleryIndex.from_table(payload, **options)
        if isinstance(payload, (bytes, bytearray, memoryview, pa.Buffer)):
            return GalleryIndex.from_bytes(payload, **options)
        if isinstance(payload, (str, os.PathLike)):
            return GalleryIndex.from_parquet(payload, **options)
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
