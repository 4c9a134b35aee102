"""Exact cosine top-k search over a gallery, in memory or streamed from Parquet. Torch-free.

Exact rather than approximate: one float32 matmul per query scans millions of rows in
milliseconds, and an approximate index would add a second, unexplainable source of misses to
a system whose misses must be explained. Gallery embeddings are unit vectors (the gallery
format enforces it) and queries are checked to be, so cosine similarity is a dot product.

Every ranking here orders by (similarity descending, gallery row ascending). The second key
makes ties deterministic and, with per-row scoring that does not depend on batching
(:func:`row_similarities`), makes the streamed search return exactly what the in-memory
one returns, similarities included.

Other search backends (:class:`facegate.gallery_cache.GalleryIndex`) build on the public
helpers here, :func:`check_k`, :func:`check_threshold`, :func:`check_query` and
:func:`row_similarities`, so that "the same search" means the same validation and the same
per-row arithmetic everywhere.

This module must never import torch, directly or indirectly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from facegate.errors import ModelMismatchError, StorageError, ValidationError
from facegate.gallery.format import DEFAULT_ROW_GROUP_SIZE, Source, open_gallery
from facegate.gallery.meta import METADATA_KEY
from facegate.gallery.table import gallery_embeddings, gallery_meta_from_schema, validate_embeddings
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

DEFAULT_K = 5
#: One row group per batch by default: the unit Parquet decompresses anyway.
DEFAULT_BATCH_ROWS = DEFAULT_ROW_GROUP_SIZE


@dataclass(frozen=True)
class Match:
    """One ranked gallery hit. ``rank`` is 1-based; ``row`` is the gallery row it came from."""

    subject_id: str
    image_key: str | None
    similarity: float
    rank: int
    row: int

    def to_dict(self) -> dict[str, object]:
        return {
            "subject_id": self.subject_id,
            "image_key": self.image_key,
            "similarity": round(self.similarity, 6),
            "rank": self.rank,
        }


@dataclass(frozen=True)
class SearchResult:
    """Top-k candidates and the verdict against ``threshold``.

    ``candidates`` are ranked regardless of the threshold (a reviewer wants to see the near
    misses); ``matches`` are those at or above it, and ``best`` is ``None`` when nothing
    clears it, so "no match" is a value the caller has to handle, not an empty list to forget.
    """

    candidates: tuple[Match, ...]
    threshold: float

    @property
    def matches(self) -> tuple[Match, ...]:
        return tuple(m for m in self.candidates if m.similarity >= self.threshold)

    @property
    def best(self) -> Match | None:
        if self.candidates and self.candidates[0].similarity >= self.threshold:
            return self.candidates[0]
        return None

    @property
    def is_match(self) -> bool:
        return self.best is not None

    def to_dict(self) -> dict[str, object]:
        best = self.best
        return {
            "is_match": best is not None,
            "threshold": self.threshold,
            "best": best.to_dict() if best is not None else None,
            "candidates": [m.to_dict() for m in self.candidates],
        }


# --------------------------------------------------------------------------------------
# Row-level top-k
# --------------------------------------------------------------------------------------


def check_k(k: Any) -> int:
    """``k`` as an int, or :class:`ValidationError` unless it is a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValidationError(f"k must be a positive int, got {k!r}")
    return int(k)


def _as_queries(query: Any, dim: int | None = None) -> np.ndarray:
    """``(D,)`` or ``(Q, D)`` in, checked ``(Q, D) float32`` out."""
    arr = np.asarray(query)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValidationError(f"query must be (D,) or (Q, D), got shape {arr.shape}")
    return validate_embeddings(arr, dim=dim, what="query")


def _as_gallery(gallery: Any, dim: int) -> np.ndarray:
    arr = np.asarray(gallery)
    if arr.ndim != 2:
        raise ValidationError(f"gallery embeddings must be (N, D), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise ModelMismatchError(f"gallery embeddings have dim {arr.shape[1]}, query has {dim}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _similarities(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``(Q, D) @ (N, D).T -> (Q, N) float32``; non-finite scores mean a corrupt gallery."""
    scores: np.ndarray = queries @ gallery.T
    if not np.isfinite(scores).all():
        raise ValidationError("gallery embeddings contain non-finite values")
    return scores


def row_similarities(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``(D,) . (N, D) -> (N,) float32``, each row's dot product computed on its own.

    Not BLAS: a BLAS kernel's summation order depends on where a row falls in its blocking,
    so the same row scored in a different batch can differ in the last bit, and a
    similarity sitting on the threshold could then flip between the in-memory and the
    streamed search. ``einsum`` sums each row in an order fixed by ``D`` alone, for about
    1.6x the time of a single-query gemv (memory-bound either way).

    This is the reference arithmetic: a backend that scans faster (BLAS) must rescore its
    candidates with it to return the same similarities and order as :func:`search_gallery`.
    Both arguments must be float32 for that guarantee.
    """
    scores: np.ndarray = np.einsum("ij,j->i", gallery, query)
    if not np.isfinite(scores).all():
        raise ValidationError("gallery embeddings contain non-finite values")
    return scores


# The former private names, for callers that used them.
_similarities_one = row_similarities


def _top_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores (Q, N)``: the ``min(k, N)`` best columns, ordered deterministically.

    ``argpartition`` picks an arbitrary subset when equal scores straddle the k-th place;
    those (rare) rows are redone exactly, preferring lower indices, so that the answer does
    not depend on how the gallery was split into batches.
    """
    q, n = scores.shape
    kk = min(k, n)
    if kk == 0:
        return np.empty((q, 0), dtype=np.int64), np.empty((q, 0), dtype=np.float32)
    if kk < n:
        picked = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        picked_scores = np.take_along_axis(scores, picked, axis=1)
        kth = picked_scores.min(axis=1, keepdims=True)
        ties_total = (scores == kth).sum(axis=1)
        ties_picked = (picked_scores == kth).sum(axis=1)
        for r in np.flatnonzero(ties_total != ties_picked):
            row = scores[r]
            above = np.flatnonzero(row > kth[r, 0])
            tied = np.flatnonzero(row == kth[r, 0])[: kk - above.size]
            picked[r] = np.concatenate([above, tied])
    else:
        picked = np.broadcast_to(np.arange(n), (q, n))
    picked = picked.astype(np.int64, copy=False)
    picked_scores = np.take_along_axis(scores, picked, axis=1)
    order = np.lexsort((picked, -picked_scores), axis=-1)
    indices = np.take_along_axis(picked, order, axis=1)
    return indices, np.take_along_axis(picked_scores, order, axis=1).astype(np.float32, copy=False)


def top_k(query: Any, gallery: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine similarity.

    ``query`` is ``(D,)`` or ``(Q, D)`` and must be finite and L2-normalised; ``gallery`` is
    ``(N, D)``, assumed normalised (the gallery format checked it at build time; checking
    again would cost as much as the search). Returns ``indices (Q, min(k, N)) int64`` and
    ``scores (Q, min(k, N)) float32``, best first, ties broken by lower index; a 1-D query
    gives ``Q == 1``. An empty gallery gives ``(Q, 0)`` arrays. Raises
    :class:`ModelMismatchError` when the dims differ.
    """
    k = check_k(k)
    queries = _as_queries(query)
    emb = _as_gallery(gallery, queries.shape[1])
    return _top_rows(_similarities(queries, emb), k)


# --------------------------------------------------------------------------------------
# Per-subject search
# --------------------------------------------------------------------------------------


class _Candidate(NamedTuple):
    similarity: float
    row: int  # global gallery row
    subject_id: str
    image_key: str | None


Lookup = Callable[[np.ndarray], list[Any]]


def _column_lookup(column: pa.Array[Any] | pa.ChunkedArray[Any]) -> Lookup:
    return lambda idx: column.take(pa.array(idx, type=pa.int64())).to_pylist()


def _sequence_lookup(values: Sequence[Any] | np.ndarray, n: int, name: str) -> Lookup:
    arr = np.asarray(values, dtype=object)
    if arr.shape != (n,):
        raise ValidationError(f"{name} must have shape ({n},), got {arr.shape}")
    return lambda idx: arr[idx].tolist()


def _ranked(candidates: Iterable[_Candidate], k: int, per_subject: bool) -> list[_Candidate]:
    """First ``k`` of ranked candidates; with ``per_subject``, a subject's first row only."""
    out: list[_Candidate] = []
    seen: set[str] = set()
    for c in candidates:
        if per_subject:
            if c.subject_id in seen:
                continue
            seen.add(c.subject_id)
        out.append(c)
        if len(out) == k:
            break
    return out


def _best_candidates(
    scores: np.ndarray,
    subjects_at: Lookup,
    keys_at: Lookup | None,
    k: int,
    per_subject: bool,
    offset: int = 0,
) -> list[_Candidate]:
    """The ``k`` best subjects (or rows) for one query's ``scores (n,)``.

    Looks at the top ``k`` rows first and widens geometrically only when several of them
    belong to the same subject, so the usual cost is one partition plus ``k`` id lookups
    instead of materialising every subject id.
    """
    n = scores.shape[0]
    take = min(k, n)
    if take == 0:
        return []
    while True:
        rows, sims = _top_rows(scores[None, :], take)
        rows, sims = rows[0], sims[0]
        subjects = subjects_at(rows)
        ranked = _ranked(
            (
                _Candidate(float(s), int(r) + offset, sid, None)
                for s, r, sid in zip(sims.tolist(), rows.tolist(), subjects, strict=True)
            ),
            k,
            per_subject,
        )
        if len(ranked) >= k or take >= n:
            break
        take = min(n, take * 4)
    if keys_at is None or not ranked:
        return ranked
    keys = keys_at(np.array([c.row - offset for c in ranked], dtype=np.int64))
    return [c._replace(image_key=key) for c, key in zip(ranked, keys, strict=True)]


def _merge(
    running: list[_Candidate], found: list[_Candidate], k: int, per_subject: bool
) -> list[_Candidate]:
    merged = sorted(running + found, key=lambda c: (-c.similarity, c.row))
    return _ranked(merged, k, per_subject)


def _result(candidates: list[_Candidate], threshold: float) -> SearchResult:
    return SearchResult(
        candidates=tuple(
            Match(c.subject_id, c.image_key, c.similarity, rank, c.row)
            for rank, c in enumerate(candidates, start=1)
        ),
        threshold=threshold,
    )


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float in ``[-1, 1]``, or :class:`ValidationError` (also for None)."""
    if threshold is None:
        raise ValidationError("no threshold: pass one, or search a gallery that carries one")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise ValidationError(f"threshold must be a number, got {threshold!r}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValidationError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    return float(threshold)


def _single_query(query: Any, dim: int | None) -> np.ndarray:
    queries = _as_queries(query, dim)
    if queries.shape[0] != 1:
        raise ValidationError(f"search takes one query, got {queries.shape[0]}; use top_k")
    return queries


def check_query(query: Any, dim: int | None = None) -> np.ndarray:
    """One query, ``(D,)`` or ``(1, D)``, checked (finite, unit length, dim) as ``(D,) float32``.

    A dim other than ``dim`` is a :class:`ModelMismatchError`; several queries, a
    non-finite or non-normalised vector a :class:`ValidationError`.
    """
    query_row: np.ndarray = _single_query(query, dim)[0]
    return query_row


# The former private names, for callers that used them.
_check_k = check_k
_check_threshold = check_threshold


def search_gallery(
    query: Any,
    gallery: pa.Table | pa.RecordBatch | np.ndarray,
    k: int = DEFAULT_K,
    threshold: float | None = None,
    *,
    subject_ids: Sequence[str] | np.ndarray | None = None,
    image_keys: Sequence[str] | np.ndarray | None = None,
    per_subject: bool = True,
) -> SearchResult:
    """Search one query ``(D,)`` against a gallery held in memory.

    ``gallery`` is either a gallery table (:func:`facegate.gallery.read_gallery`), whose
    metadata supplies the threshold when none is given, or an ``(N, D)`` embedding array
    with ``subject_ids (N,)`` and optionally ``image_keys (N,)``. With ``per_subject`` (the
    default) a subject's best row counts once, so the k candidates are k different people.
    """
    k = check_k(k)
    keys_at: Lookup | None
    if isinstance(gallery, (pa.Table, pa.RecordBatch)):
        if subject_ids is not None or image_keys is not None:
            raise ValidationError("subject_ids/image_keys go with an embedding array, not a table")
        meta = None
        if METADATA_KEY in (gallery.schema.metadata or {}):
            meta = gallery_meta_from_schema(gallery.schema)
            if threshold is None:
                threshold = meta.threshold
        emb = gallery_embeddings(gallery)
        subjects_at = _column_lookup(gallery.column("subject_id"))
        names = gallery.schema.names
        keys_at = _column_lookup(gallery.column("image_key")) if "image_key" in names else None
        dim = meta.dim if meta is not None else emb.shape[1]
    else:
        if subject_ids is None:
            raise ValidationError("an embedding array needs subject_ids")
        emb = np.asarray(gallery)
        if emb.ndim != 2:
            raise ValidationError(f"gallery embeddings must be (N, D), got shape {emb.shape}")
        dim = emb.shape[1]
        subjects_at = _sequence_lookup(subject_ids, emb.shape[0], "subject_ids")
        keys_at = (
            None if image_keys is None else _sequence_lookup(image_keys, emb.shape[0], "image_keys")
        )
    threshold = check_threshold(threshold)
    queries = _single_query(query, dim)
    scores = row_similarities(queries[0], _as_gallery(emb, dim))
    return _result(_best_candidates(scores, subjects_at, keys_at, k, per_subject), threshold)


def search_parquet_streaming(
    source: Source,
    query: Any,
    k: int = DEFAULT_K,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    *,
    threshold: float | None = None,
    expected_model_id: str | None = None,
    per_subject: bool = True,
) -> SearchResult:
    """:func:`search_gallery` over a gallery file without loading it whole.

    Memory is bounded by one decoded row group (Parquet's unit of decompression, see
    ``DEFAULT_ROW_GROUP_SIZE``) plus one batch of ``batch_rows``, whatever the file's size.

    Each batch yields its own best k subjects; merging them with the running best k gives
    the global answer because a subject in the global top k is also in the top k of the
    batch holding its best row. Rows are numbered globally, so ties break as in memory.
    The footer is checked (model id, schema) before any row is read, and a file with fewer
    rows than its metadata claims is refused.
    """
    k = check_k(k)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValidationError(f"batch_rows must be a positive int, got {batch_rows!r}")
    meta, pf = open_gallery(source, expected_model_id)
    threshold = check_threshold(meta.threshold if threshold is None else threshold)
    queries = _single_query(query, meta.dim)

    running: list[_Candidate] = []
    seen = 0
    batches = pf.iter_batches(
        batch_size=batch_rows, columns=["subject_id", "image_key", "embedding"]
    )
    try:
        for batch in batches:
            scores = row_similarities(queries[0], gallery_embeddings(batch))
            found = _best_candidates(
                scores,
                _column_lookup(batch.column("subject_id")),
                _column_lookup(batch.column("image_key")),
                k,
                per_subject,
                offset=seen,
            )
            running = _merge(running, found, k, per_subject)
            seen += batch.num_rows
    except OSError as exc:
        raise StorageError(f"cannot read gallery {source!r}", detail=str(exc)) from exc
    except pa.ArrowException as exc:
        raise ValidationError(f"corrupt gallery {source!r}", detail=str(exc)) from exc
    if seen != meta.row_count:
        raise ValidationError(f"gallery has {seen} rows but its metadata says {meta.row_count}")
    return _result(running, threshold)
