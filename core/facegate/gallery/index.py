"""A gallery loaded once and searched many times: the in-memory index. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from copy import copy as shallow_copy
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from facegate.errors import ModelMismatchError, StorageError, ValidationError
from facegate.gallery.format import Source, open_gallery
from facegate.gallery.kernels import (
    _F16_SCALE,
    LOAD_BATCH_ROWS,
    _block_rows,
    _check_dtype,
    _check_threads,
    _MatrixBuilder,
    _max_row_norm,
    _run_blocks,
    _scratch,
    _string_array,
    _table_embedding_blocks,
    f16_to_scaled_f32,
)
from facegate.gallery.meta import METADATA_KEY, GalleryMeta
from facegate.gallery.search import (
    DEFAULT_K,
    Match,
    SearchResult,
    check_k,
    check_query,
    check_threshold,
    row_similarities,
)
from facegate.gallery.table import gallery_embeddings, gallery_meta_from_schema
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa

    from facegate.gallery.ann import AnnIndex
else:
    pa = lazy_module("pyarrow")

#: Below this many rows a thread pool costs more than it saves.
PARALLEL_MIN_ROWS = 1 << 15
#: Per-subject search widens its candidate rows straight to the number that guarantees k
#: subjects when that number is at most this; beyond it (a subject with very many rows) it
#: widens geometrically, like ``search_gallery``.
_DIRECT_WIDEN_ROWS = 1 << 16
_UNIT_ROUNDOFF = 2.0**-24  # float32


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
        subject_ids: Sequence[str] | np.ndarray | pa.Array[Any] | pa.ChunkedArray[Any],
        image_keys: Sequence[str] | np.ndarray | pa.Array[Any] | pa.ChunkedArray[Any] | None = None,
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
        subjects: pa.Array[Any],
        keys: pa.Array[Any] | None,
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
        self._subject_names: pa.Array[Any] = encoded.dictionary
        self._max_rows_per_subject = int(np.bincount(self._codes).max()) if self._codes.size else 0
        self._image_keys = keys
        self._ann: AnnIndex | None = None
        self._always = np.zeros(0, np.int64)

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
        subjects: list[pa.Array[Any]] = []
        keys: list[pa.Array[Any]] = []
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
        return int(self._matrix.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self._matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self._matrix.shape[1])

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
    def subject_names(self) -> pa.Array[Any]:
        return self._subject_names

    @property
    def image_keys(self) -> pa.Array[Any] | None:
        return self._image_keys

    @property
    def ann(self) -> AnnIndex | None:
        """The ANN shortlist index searches go through, if any (see :meth:`with_ann`)."""
        return self._ann

    def with_ann(self, ann: AnnIndex | None, always: np.ndarray | None = None) -> GalleryIndex:
        """This gallery searched through ``ann``'s shortlists (rescored exactly from this
        matrix); None: exact. A new object sharing the matrix: instances stay immutable.

        ``always``: rows every shortlist includes, for an index built before them (a
        gallery's delta on top of the base the index was built from:
        :func:`~facegate.gallery.generations.merge_generations`); rows past the index's
        must be among them."""
        extra = np.zeros(0, np.int64) if always is None else np.unique(np.asarray(always))
        if ann is not None:
            past = self.n_rows - ann.n_rows
            covered = int(np.count_nonzero(extra >= ann.n_rows))
            if (
                ann.dim != self.dim
                or past < 0
                or covered != past
                or (extra.size and (extra[0] < 0 or extra[-1] >= self.n_rows))
            ):
                raise ModelMismatchError(
                    f"ANN index of {ann.n_rows} rows x {ann.dim} does not fit a gallery of "
                    f"{self.n_rows} x {self.dim} ({extra.size} rows added)"
                )
        twin = shallow_copy(self)
        twin._ann = ann
        twin._always = extra
        return twin

    @property
    def matrix_nbytes(self) -> int:
        return int(self._matrix.nbytes)

    @property
    def nbytes(self) -> int:
        """Memory held: the matrix, the subject codes and names, the image keys."""
        total = self._matrix.nbytes + self._codes.nbytes + self._subject_names.nbytes
        if self._image_keys is not None:
            total += self._image_keys.nbytes
        if self._ann is not None:
            total += self._ann.nbytes
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
        if self._ann is not None:
            rows, sims = self._shortlisted(q, k, per_subject, self._ann)
            return self._result(rows, sims, threshold)
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

    def _shortlisted(
        self, q: np.ndarray, k: int, per_subject: bool, ann: AnnIndex
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` rows (or subjects' best rows) among the ANN shortlist, rescored
        exactly and ranked as the exact path ranks them (similarity desc, row asc). A
        shortlist with fewer than ``k`` subjects is widened fourfold until it has them or
        holds every row."""
        n = self.n_rows
        want = min(k, self.n_subjects) if per_subject else min(k, n)
        count = max(ann.params.shortlist, 2 * k)
        while True:
            candidates = ann.shortlist(q, min(count, ann.n_rows))
            if self._always.size:
                candidates = np.union1d(candidates, self._always)
            sims = self._rescore(q, candidates)
            order = np.lexsort((candidates, -sims))
            rows, sims = candidates[order], sims[order]
            if per_subject:
                _, first = np.unique(self._codes[rows], return_index=True)
                keep = np.sort(first)[:want]
            else:
                keep = np.arange(min(want, rows.size))
            if keep.size >= want or count >= ann.n_rows:
                return rows[keep], sims[keep]
            count *= 4

    def _result(self, rows: np.ndarray, sims: np.ndarray, threshold: float) -> SearchResult:
        if rows.size == 0:
            return SearchResult(candidates=(), threshold=threshold)
        codes = pa.array(self._codes[rows], type=pa.int32())
        # Subject names are never null (checked when the index was built).
        subjects = cast(list[str], self._subject_names.take(codes).to_pylist())
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
