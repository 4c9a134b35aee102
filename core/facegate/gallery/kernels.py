"""Blocked matrix kernels for gallery search: float16 widening, thread pools, scratch.

Torch-free.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.errors import ValidationError
from facegate.gallery.table import gallery_embeddings
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

#: Rows per batch when loading a Parquet gallery: memory beyond the matrix is one batch.
LOAD_BATCH_ROWS = 65536
#: float32 bytes per widened float16 block: fits a 2 MiB L2 with room for the rest.
BLOCK_BYTES = 1 << 20

_DTYPES = {np.dtype(np.float32), np.dtype(np.float16)}
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


def _check_dtype(dtype: Any) -> np.dtype[Any]:
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
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


def _string_array(values: Any, name: str, n: int) -> pa.Array[Any]:
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
