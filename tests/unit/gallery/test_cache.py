"""GalleryIndex (same answers as search_gallery, float16 within tolerance) and GalleryCache."""

from __future__ import annotations

import io
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_support import run_without_torch, unit_rows

import facegate.gallery.index as gindex
import facegate.gallery.kernels as gk
from facegate.errors import ModelMismatchError, StorageError, ValidationError
from facegate.gallery.cache import GalleryCache
from facegate.gallery.format import (
    GalleryMeta,
    build_gallery_table,
    gallery_embeddings,
    write_gallery,
)
from facegate.gallery.index import GalleryIndex
from facegate.gallery.kernels import f16_to_scaled_f32
from facegate.gallery.search import SearchResult, search_gallery

DIM = 32
SHA = "ef" * 32


def near(rng: np.random.Generator, row: np.ndarray, noise: float) -> np.ndarray:
    """A unit vector close to ``row``: a genuine probe."""
    v = row + noise * rng.standard_normal(row.shape[0]).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def table_of(
    emb: np.ndarray, subjects: list[str], *, threshold: float = 0.5, model_id: str = "sface"
) -> pa.Table:
    n, dim = emb.shape
    return build_gallery_table(
        subject_ids=subjects,
        image_keys=[f"img/{i}.jpg" for i in range(n)],
        face_indices=np.zeros(n, np.int32),
        bboxes=np.zeros((n, 4), np.float32),
        det_scores=np.ones(n, np.float32),
        embeddings=emb,
        meta=GalleryMeta(model_id=model_id, weights_sha256=SHA, dim=dim, threshold=threshold),
    )


def make_gallery(
    n: int, n_subjects: int, seed: int = 0, dim: int = DIM, threshold: float = 0.5
) -> tuple[pa.Table, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    emb = unit_rows(rng, n, dim)
    subjects = [f"subj-{int(i)}" for i in rng.integers(0, n_subjects, n)]
    return table_of(emb, subjects, threshold=threshold), emb, subjects


def parquet_bytes(table: pa.Table, row_group_size: int = 64) -> bytes:
    sink = io.BytesIO()
    write_gallery(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def probes(emb: np.ndarray, seed: int, count: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, emb.shape[0], count)
    out = [emb[rows[0]].copy()]  # an exact gallery row
    out += [near(rng, emb[r], 0.3) for r in rows[1:]]
    out += list(unit_rows(rng, 4, emb.shape[1]))  # strangers
    return out


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many float16 blocks and the thread pool even on small galleries."""
    monkeypatch.setattr(gk, "BLOCK_BYTES", 64 * 4 * DIM)  # 64-row blocks
    monkeypatch.setattr(gindex, "PARALLEL_MIN_ROWS", 0)
    monkeypatch.setattr(gk, "LOAD_BATCH_ROWS", 100)
    monkeypatch.setattr(gindex, "LOAD_BATCH_ROWS", 100)


# ---------------------------------------------------------------------------- float32


@pytest.mark.parametrize("per_subject", [True, False])
@pytest.mark.parametrize("k", [1, 5, 37])
def test_float32_index_equals_search_gallery(per_subject: bool, k: int) -> None:
    table, emb, _ = make_gallery(n=3000, n_subjects=300, seed=1)
    index = GalleryIndex.from_table(table)
    for query in probes(emb, seed=2):
        expected = search_gallery(query, table, k=k, per_subject=per_subject)
        got = index.search(query, k=k, per_subject=per_subject)
        assert got == expected  # order, rows, keys and similarities bit for bit
        assert len(got.candidates) == k


def test_every_way_of_building_gives_the_same_answers(tmp_path) -> None:
    table, emb, subjects = make_gallery(n=900, n_subjects=60, seed=3, threshold=0.3)
    path = tmp_path / "g.parquet"
    write_gallery(table, path, row_group_size=128)
    chunked = pa.concat_tables([table.slice(0, 300), table.slice(300, 450), table.slice(750)])
    assert chunked.column("embedding").num_chunks == 3
    keys = [f"img/{i}.jpg" for i in range(900)]
    indexes = [
        GalleryIndex.from_table(table),
        GalleryIndex.from_table(chunked),
        GalleryIndex.from_table(table.to_batches()[0]),
        GalleryIndex.from_parquet(path),
        GalleryIndex.from_bytes(path.read_bytes()),
        GalleryIndex(emb, subjects, keys, threshold=0.3),
        GalleryIndex(emb.astype(np.float64), np.array(subjects), pa.array(keys), threshold=0.3),
    ]
    for query in probes(emb, seed=4, count=6):
        expected = search_gallery(query, table, k=7)
        for index in indexes:
            assert index.search(query, k=7) == expected
    no_keys = GalleryIndex(emb, subjects, threshold=0.3)
    result = no_keys.search(emb[10], k=3)
    assert result == search_gallery(emb[10], emb, k=3, threshold=0.3, subject_ids=subjects)
    assert all(m.image_key is None for m in result.candidates)


def test_single_chunk_float32_table_is_not_copied() -> None:
    table, _, _ = make_gallery(n=200, n_subjects=20, seed=5)
    index = GalleryIndex.from_table(table)
    assert np.shares_memory(index.embeddings, gallery_embeddings(table))
    assert not index.embeddings.flags.writeable
    copied = GalleryIndex.from_table(table, copy=True)
    assert not np.shares_memory(copied.embeddings, gallery_embeddings(table))
    assert copied.embeddings.flags.c_contiguous and not copied.embeddings.flags.writeable


def test_ties_break_by_row_like_search_gallery() -> None:
    rng = np.random.default_rng(6)
    emb = unit_rows(rng, 400, DIM)
    base = emb[7].copy()
    tied = [3, 40, 41, 99, 150, 151, 152, 300, 399]
    emb[tied] = base
    subjects = [f"s{i % 50}" for i in range(400)]
    table = table_of(emb, subjects)
    index = GalleryIndex.from_table(table)
    for k in (1, 2, 4, 9, 12):
        for per_subject in (True, False):
            expected = search_gallery(base, table, k=k, per_subject=per_subject)
            assert index.search(base, k=k, per_subject=per_subject) == expected
    rows = [m.row for m in index.search(base, k=4, per_subject=False).candidates]
    assert rows == [3, 7, 40, 41]


def test_near_ties_closer_than_rounding_keep_the_reference_order() -> None:
    """Rows a few ulps apart, where BLAS and einsum may disagree: the rescoring decides."""
    rng = np.random.default_rng(7)
    base = unit_rows(rng, 1, DIM)[0]
    cloud = base + 1e-6 * rng.standard_normal((2000, DIM)).astype(np.float32)
    cloud /= np.linalg.norm(cloud, axis=1, keepdims=True)
    emb = np.vstack([unit_rows(rng, 500, DIM), cloud]).astype(np.float32)
    subjects = [f"s{i % 700}" for i in range(emb.shape[0])]
    table = table_of(emb, subjects)
    index = GalleryIndex.from_table(table)
    for query in [base, near(rng, base, 1e-5), near(rng, base, 1e-3)]:
        for per_subject in (True, False):
            for k in (1, 10, 64):
                expected = search_gallery(query, table, k=k, per_subject=per_subject)
                assert index.search(query, k=k, per_subject=per_subject) == expected


def test_a_subject_owning_the_top_rows_widens_like_search_gallery(monkeypatch) -> None:
    rng = np.random.default_rng(8)
    centre = unit_rows(rng, 1, DIM)[0]
    crowd = np.stack([near(rng, centre, 0.05) for _ in range(120)])
    emb = np.vstack([unit_rows(rng, 1000, DIM), crowd]).astype(np.float32)
    subjects = [f"s{i % 200}" for i in range(1000)] + ["crowd"] * 120
    table = table_of(emb, subjects)
    index = GalleryIndex.from_table(table)
    expected = search_gallery(centre, table, k=5)
    assert expected.candidates[0].subject_id == "crowd"
    assert index.search(centre, k=5) == expected
    # The geometric path, taken when one subject has too many rows to jump directly.
    monkeypatch.setattr(gindex, "_DIRECT_WIDEN_ROWS", 8)
    assert index.search(centre, k=5) == expected
    assert index.search(centre, k=500) == search_gallery(centre, table, k=500)


def test_k_beyond_subjects_and_rows() -> None:
    table, emb, subjects = make_gallery(n=40, n_subjects=6, seed=9)
    index = GalleryIndex.from_table(table)
    result = index.search(emb[0], k=100)
    assert result == search_gallery(emb[0], table, k=100)
    assert {m.subject_id for m in result.candidates} == set(subjects)
    rows = index.search(emb[0], k=100, per_subject=False)
    assert rows == search_gallery(emb[0], table, k=100, per_subject=False)
    assert len(rows.candidates) == 40


def test_threshold_defaults_overrides_and_verdict() -> None:
    table, emb, _ = make_gallery(n=50, n_subjects=10, seed=10, threshold=0.42)
    index = GalleryIndex.from_table(table)
    assert index.threshold == pytest.approx(0.42)
    assert index.search(emb[0], k=2).threshold == pytest.approx(0.42)
    assert index.search(emb[0], k=2, threshold=0.99).threshold == 0.99
    assert GalleryIndex.from_table(table, threshold=0.8).threshold == 0.8
    stranger = unit_rows(np.random.default_rng(99), 1, DIM)[0]
    result = index.search(stranger, k=3, threshold=0.95)
    assert result.best is None and not result.is_match and len(result.candidates) == 3
    bare = GalleryIndex(emb, ["x"] * 50)
    with pytest.raises(ValidationError, match="threshold"):
        bare.search(emb[0])
    assert bare.search(emb[0], threshold=0.5).best is not None


def test_empty_gallery_is_no_match() -> None:
    index = GalleryIndex(np.empty((0, DIM), np.float32), [], threshold=0.5)
    result = index.search(unit_rows(np.random.default_rng(0), 1, DIM)[0], k=3)
    assert result == SearchResult(candidates=(), threshold=0.5)
    empty = table_of(np.empty((0, DIM), np.float32), [])
    assert len(GalleryIndex.from_table(empty)) == 0
    assert GalleryIndex.from_bytes(parquet_bytes(empty)).search(np.eye(DIM)[0]).candidates == ()


def test_search_refuses_what_search_gallery_refuses() -> None:
    table, emb, _ = make_gallery(n=20, n_subjects=4, seed=11)
    index = GalleryIndex.from_table(table)
    rng = np.random.default_rng(0)
    with pytest.raises(ModelMismatchError):
        index.search(unit_rows(rng, 1, DIM + 4)[0])
    with pytest.raises(ValidationError):
        index.search(emb[:2])  # one query at a time
    with pytest.raises(ValidationError):
        index.search(emb[0] * 3)  # not normalised
    with pytest.raises(ValidationError):
        index.search(emb[0], k=0)
    with pytest.raises(ValidationError):
        index.search(emb[0], threshold=1.5)


def test_construction_refuses_bad_galleries(tmp_path) -> None:
    table, emb, subjects = make_gallery(n=10, n_subjects=3, seed=12)
    with pytest.raises(ModelMismatchError):
        GalleryIndex.from_table(table, expected_model_id="arcface")
    data = parquet_bytes(table)
    with pytest.raises(ModelMismatchError):
        GalleryIndex.from_bytes(data, expected_model_id="arcface")
    with pytest.raises(ValidationError):
        GalleryIndex.from_bytes(b"not a parquet file")
    short = tmp_path / "short.parquet"
    pq.write_table(table.slice(0, 4), short)  # metadata still claims 10 rows
    with pytest.raises(ValidationError, match="rows"):
        GalleryIndex.from_parquet(short)
    with pytest.raises(ValidationError, match="rows"):
        GalleryIndex.from_table(table.slice(0, 4))
    with pytest.raises(ValidationError, match="dtype"):
        GalleryIndex.from_table(table, dtype="int8")
    with pytest.raises(ValidationError, match="threads"):
        GalleryIndex.from_table(table, threads=0)
    bad = emb.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValidationError, match="non-finite"):
        GalleryIndex(bad, subjects)
    with pytest.raises(ValidationError, match="non-finite"):
        GalleryIndex(bad, subjects, dtype="float16")
    with pytest.raises(ValidationError, match="float16"):
        GalleryIndex(emb * 1e5, subjects, dtype="float16")
    with pytest.raises(ValidationError, match="subject_ids"):
        GalleryIndex(emb, subjects[:-1])
    with pytest.raises(ValidationError, match="nulls"):
        GalleryIndex(emb, [None, *subjects[1:]])
    with pytest.raises(ValidationError):
        GalleryIndex(emb[0], subjects)


# ---------------------------------------------------------------------------- float16


def test_f16_widening_is_exact_for_every_normal_value() -> None:
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = bits.view(np.float16)
    exponent = bits & 0x7C00
    usable = (exponent != 0x7C00) & ((exponent != 0) | ((bits & 0x3FF) == 0))  # no inf/nan/sub
    src = values[usable].reshape(1, -1)
    out = np.empty(src.shape, np.int32)
    wide = f16_to_scaled_f32(src, out)
    np.testing.assert_array_equal(wide * np.float32(2.0**112), src.astype(np.float32))


def test_float16_index_within_tolerance_and_same_top1() -> None:
    rng = np.random.default_rng(13)
    emb = unit_rows(rng, 5000, 128)
    subjects = [f"s{i // 10}" for i in range(5000)]
    table = table_of(emb, subjects, threshold=0.4)
    f32 = GalleryIndex.from_table(table)
    f16 = GalleryIndex.from_table(table, dtype="float16")
    assert f16.dtype == np.float16 and f16.embeddings.shape == (5000, 128)
    assert f16.matrix_nbytes * 2 == f32.matrix_nbytes
    assert f16.nbytes < 0.6 * f32.nbytes
    worst = 0.0
    for row in rng.integers(0, 5000, 40):
        query = near(rng, emb[row], 0.06)  # similarity ~0.8 to its row
        a, b = f32.search(query, k=10), f16.search(query, k=10)
        assert b.candidates[0].subject_id == a.candidates[0].subject_id == subjects[row]
        for m in b.candidates:  # each reported similarity vs its row's float32 similarity
            exact = float(emb[m.row].astype(np.float64) @ query.astype(np.float64))
            worst = max(worst, abs(m.similarity - exact))
        np.testing.assert_allclose(
            [m.similarity for m in b.candidates], [m.similarity for m in a.candidates], atol=1e-3
        )
    assert worst < 1e-3


def test_float16_results_do_not_depend_on_blocks_or_threads(monkeypatch) -> None:
    """Search results are bit for bit the same (candidates are rescored with
    ``row_similarities``); the BLAS scan scores only to float rounding, since a BLAS kernel's
    summation order may depend on where a row falls in a block, on some CPUs."""
    table, emb, _ = make_gallery(n=1500, n_subjects=100, seed=14)
    reference = GalleryIndex.from_table(table, dtype="float16", threads=1)
    scores_before = reference.scores(emb[0])
    monkeypatch.setattr(gk, "BLOCK_BYTES", 64 * 4 * DIM)
    monkeypatch.setattr(gindex, "PARALLEL_MIN_ROWS", 0)
    monkeypatch.setattr(gk, "LOAD_BATCH_ROWS", 100)
    monkeypatch.setattr(gindex, "LOAD_BATCH_ROWS", 100)
    for threads in (1, 2, 3):
        index = GalleryIndex.from_table(table, dtype="float16", threads=threads)
        np.testing.assert_array_equal(index.embeddings, reference.embeddings)
        np.testing.assert_allclose(index.scores(emb[0]), scores_before, rtol=0, atol=1e-6)
        for query in probes(emb, seed=15, count=5):
            for per_subject in (True, False):
                assert index.search(query, k=6, per_subject=per_subject) == reference.search(
                    query, k=6, per_subject=per_subject
                )


def test_float32_blocks_and_threads_change_nothing(small_blocks) -> None:
    table, emb, _ = make_gallery(n=1500, n_subjects=100, seed=19)
    for threads in (1, 2, 3):
        index = GalleryIndex.from_table(table, threads=threads)
        np.testing.assert_allclose(index.scores(emb[1]), emb @ emb[1], atol=1e-6)
        for query in probes(emb, seed=20, count=5):
            for per_subject in (True, False):
                expected = search_gallery(query, table, k=6, per_subject=per_subject)
                assert index.search(query, k=6, per_subject=per_subject) == expected


def test_run_blocks_covers_every_block_once_without_waiting_for_idle_threads(
    monkeypatch,
) -> None:
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def work(start: int, stop: int) -> None:
        with lock:
            seen.append((start, stop))

    expected = [(s, min(1000, s + 64)) for s in range(0, 1000, 64)]
    for workers in (1, 2, 5):
        seen.clear()
        gk._run_blocks(1000, 64, work, workers)
        assert sorted(seen) == expected

    class NeverScheduled:  # a pool whose threads never get the CPU
        def submit(self, fn):
            return None

    monkeypatch.setattr(gk, "_pool", lambda workers: NeverScheduled())
    seen.clear()
    gk._run_blocks(1000, 64, work, 4)  # the caller does it all, and does not hang
    assert sorted(seen) == expected


def test_run_blocks_reraises_a_workers_error() -> None:
    def work(start: int, stop: int) -> None:
        if start == 640:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        gk._run_blocks(1000, 64, work, 3)


def test_float16_scan_equals_a_plain_conversion(small_blocks) -> None:
    table, emb, _ = make_gallery(n=700, n_subjects=50, seed=16)
    index = GalleryIndex.from_table(table, dtype="float16", threads=2)
    widened = index.embeddings.astype(np.float32)
    for query in probes(emb, seed=17, count=4):
        np.testing.assert_allclose(index.scores(query), widened @ query, atol=1e-6)
        rescored = search_gallery(
            query, widened, k=5, threshold=0.5, subject_ids=index_subjects(index)
        )
        assert [(m.row, m.similarity) for m in index.search(query, k=5).candidates] == [
            (m.row, m.similarity) for m in rescored.candidates
        ]


def index_subjects(index: GalleryIndex) -> list[str]:
    return index.subject_names.take(pa.array(index.subject_codes)).to_pylist()


def test_float16_subnormals_are_flushed() -> None:
    emb = np.zeros((2, 4), np.float32)
    emb[0] = [1e-6, -3e-6, 0.6, 0.8]  # the first two are float16 subnormals
    emb[1] = [0.0, 1.0, 0.0, 0.0]
    index = GalleryIndex(emb, ["a", "b"], dtype="float16", threshold=0.5)
    assert index.embeddings[0, 0] == 0 and index.embeddings[0, 1] == 0
    assert index.embeddings[0, 2] == np.float16(0.6)
    assert index.search(np.array([0, 0, 0.6, 0.8], np.float32), k=1).best.subject_id == "a"


def test_parquet_load_streams_into_the_matrix(tmp_path, small_blocks) -> None:
    table, emb, _ = make_gallery(n=1000, n_subjects=80, seed=18)
    path = tmp_path / "g.parquet"
    write_gallery(table, path, row_group_size=128)
    for dtype in ("float32", "float16"):
        index = GalleryIndex.from_parquet(path, dtype=dtype)
        assert index.embeddings.dtype == np.dtype(dtype)
        expected = emb.astype(dtype)
        if dtype == "float16":
            expected[np.abs(expected) < 2.0**-14] = 0  # subnormals flushed
        np.testing.assert_array_equal(index.embeddings, expected)
        assert index.n_subjects == len(set(table.column("subject_id").to_pylist()))
        assert index.image_keys.to_pylist() == table.column("image_key").to_pylist()
        assert index.meta is not None and index.meta.row_count == 1000


# ---------------------------------------------------------------------------- GalleryCache


class FakeStore:
    """An object store with etags and conditional reads, counting what it served."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[str, object]] = {}
        self.calls: list[tuple[str, str, str | None]] = []
        self.downloads = 0
        self.honour_if_none_match = True

    def put(self, bucket: str, key: str, etag: str, payload: object) -> None:
        self.objects[(bucket, key)] = (etag, payload)

    def loader(self, bucket: str, key: str):
        def load(if_none_match: str | None):
            self.calls.append((bucket, key, if_none_match))
            etag, payload = self.objects[(bucket, key)]
            if self.honour_if_none_match and if_none_match == etag:
                return etag, None
            self.downloads += 1
            return etag, payload

        return load


@pytest.fixture(scope="module")
def galleries() -> dict[str, bytes]:
    out = {}
    for name, seed in (("a", 20), ("b", 21), ("c", 22), ("a2", 23)):
        table, _, _ = make_gallery(n=500, n_subjects=50, seed=seed)
        out[name] = parquet_bytes(table)
    return out


def test_cache_hit_miss_and_reload_on_etag_change(galleries) -> None:
    store = FakeStore()
    store.put("bkt", "g/a.parquet", '"v1"', galleries["a"])
    cache = GalleryCache()
    first = cache.get("bkt", "g/a.parquet", store.loader("bkt", "g/a.parquet"))
    assert cache.stats().to_dict() | {"nbytes": 0} == {
        "hits": 0, "misses": 1, "reloads": 0, "evictions": 0, "uncacheable": 0,
        "entries": 1, "nbytes": 0, "max_bytes": 1 << 30,
    }  # fmt: skip
    again = cache.get("bkt", "g/a.parquet", store.loader("bkt", "g/a.parquet"))
    assert again is first
    assert store.calls == [("bkt", "g/a.parquet", None), ("bkt", "g/a.parquet", '"v1"')]
    assert store.downloads == 1  # the second call was a conditional read: not modified
    assert cache.stats().hits == 1 and cache.stats().misses == 1
    assert ("bkt", "g/a.parquet", '"v1"') in cache and ("bkt", "g/a.parquet") in cache

    store.put("bkt", "g/a.parquet", '"v2"', galleries["a2"])
    reloaded = cache.get("bkt", "g/a.parquet", store.loader("bkt", "g/a.parquet"))
    assert reloaded is not first
    assert not np.array_equal(reloaded.embeddings, first.embeddings)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.reloads, stats.entries) == (1, 2, 1, 1)
    assert cache.entries() == [("bkt", "g/a.parquet", '"v2"')]
    assert cache.nbytes == reloaded.nbytes == stats.nbytes


def test_cache_known_etag_skips_the_loader(galleries) -> None:
    store = FakeStore()
    store.put("bkt", "a", "e1", galleries["a"])
    cache = GalleryCache()
    index = cache.get("bkt", "a", store.loader("bkt", "a"), etag="e1")
    assert cache.get("bkt", "a", store.loader("bkt", "a"), etag="e1") is index
    assert len(store.calls) == 1
    store.put("bkt", "a", "e2", galleries["a2"])
    assert cache.get("bkt", "a", store.loader("bkt", "a"), etag="e2") is not index
    assert cache.stats().reloads == 1 and cache.peek("bkt", "a", "e1") is None
    assert cache.peek("bkt", "a", "e2") is cache.peek("bkt", "a")


def test_cache_reuses_the_index_when_the_loader_ignores_if_none_match(galleries) -> None:
    store = FakeStore()
    store.honour_if_none_match = False
    store.put("bkt", "a", "e1", galleries["a"])
    cache = GalleryCache()
    index = cache.get("bkt", "a", store.loader("bkt", "a"))
    assert cache.get("bkt", "a", store.loader("bkt", "a")) is index
    assert store.downloads == 2 and cache.stats().misses == 1 and cache.stats().hits == 1


def test_cache_accepts_a_loader_without_arguments(galleries) -> None:
    calls = []

    def load():
        calls.append(1)
        return '"e1"', galleries["a"]

    cache = GalleryCache()
    index = cache.get("bkt", "a", load)
    assert cache.get("bkt", "a", load) is index  # same etag: downloaded, not rebuilt
    assert cache.get("bkt", "a", load, etag='"e1"') is index  # known etag: not called
    assert len(calls) == 2
    assert (cache.stats().hits, cache.stats().misses) == (2, 1)
    with pytest.raises(StorageError, match="etag, payload"):
        cache.get("bkt", "b", lambda: galleries["a"])


def test_cache_evicts_least_recently_used_by_bytes(galleries) -> None:
    store = FakeStore()
    for name in ("a", "b", "c"):
        store.put("bkt", name, f"e-{name}", galleries[name])
    size = GalleryIndex.from_bytes(galleries["a"]).nbytes
    cache = GalleryCache(max_bytes=2 * size + size // 2)  # room for two
    a = cache.get("bkt", "a", store.loader("bkt", "a"))
    cache.get("bkt", "b", store.loader("bkt", "b"))
    assert cache.get("bkt", "a", store.loader("bkt", "a")) is a  # a is now most recent
    cache.get("bkt", "c", store.loader("bkt", "c"))  # evicts b
    assert [k for _, k, _ in cache.entries()] == ["a", "c"]
    assert cache.stats().evictions == 1
    assert cache.nbytes <= cache.max_bytes
    cache.get("bkt", "b", store.loader("bkt", "b"))  # a miss again; evicts a
    assert [k for _, k, _ in cache.entries()] == ["c", "b"]
    stats = cache.stats()
    assert (stats.misses, stats.hits, stats.evictions, stats.reloads) == (4, 1, 2, 0)


def test_cache_does_not_keep_what_exceeds_the_budget(galleries) -> None:
    store = FakeStore()
    store.put("bkt", "a", "e1", galleries["a"])
    cache = GalleryCache(max_bytes=1000)
    index = cache.get("bkt", "a", store.loader("bkt", "a"))
    assert isinstance(index, GalleryIndex) and len(cache) == 0 and cache.nbytes == 0
    assert cache.stats().uncacheable == 1
    cache.get("bkt", "a", store.loader("bkt", "a"))
    assert store.downloads == 2


def test_cache_max_age_trusts_a_recent_entry(galleries) -> None:
    now = [100.0]
    store = FakeStore()
    store.put("bkt", "a", "e1", galleries["a"])
    cache = GalleryCache(max_age_s=60, clock=lambda: now[0])
    index = cache.get("bkt", "a", store.loader("bkt", "a"))
    now[0] += 59
    assert cache.get("bkt", "a", store.loader("bkt", "a")) is index
    assert len(store.calls) == 1
    now[0] += 2
    assert cache.get("bkt", "a", store.loader("bkt", "a")) is index  # revalidated
    assert len(store.calls) == 2 and store.downloads == 1
    now[0] += 30
    cache.get("bkt", "a", store.loader("bkt", "a"))  # revalidation restarted the clock
    assert len(store.calls) == 2


def test_cache_payload_kinds_and_options(tmp_path, galleries) -> None:
    table, emb, _ = make_gallery(n=300, n_subjects=30, seed=24)
    path = tmp_path / "g.parquet"
    write_gallery(table, path)
    ready = GalleryIndex.from_table(table)
    cache = GalleryCache(dtype="float16")
    from_table = cache.get("b", "table", lambda _: ("1", table))
    from_path = cache.get("b", "path", lambda _: ("1", str(path)))
    from_buffer = cache.get("b", "buffer", lambda _: ("1", pa.py_buffer(galleries["a"])))
    assert cache.get("b", "ready", lambda _: ("1", ready)) is ready
    assert from_table.dtype == from_path.dtype == from_buffer.dtype == np.float16
    assert from_table.search(emb[3], k=1).best.row == 3
    assert len(cache) == 4

    strict = GalleryCache(expected_model_id="arcface")
    with pytest.raises(ModelMismatchError):
        strict.get("b", "k", lambda _: ("1", galleries["a"]))
    with pytest.raises(ModelMismatchError):
        strict.get("b", "k", lambda _: ("1", ready))
    assert len(strict) == 0


def test_cache_refuses_bad_loaders_and_arguments(galleries) -> None:
    cache = GalleryCache()
    with pytest.raises(StorageError, match="no data"):
        cache.get("b", "k", lambda _: ("1", None))
    with pytest.raises(StorageError, match="etag"):
        cache.get("b", "k", lambda _: ("", galleries["a"]))
    with pytest.raises(Exception, match="payload"):
        cache.get("b", "k", lambda _: ("1", 42))
    with pytest.raises(ValidationError):
        cache.get("", "k", lambda _: ("1", galleries["a"]))
    with pytest.raises(ValidationError):
        GalleryCache(max_bytes=-1)
    with pytest.raises(ValidationError):
        GalleryCache(dtype="float64")
    assert len(cache) == 0 and cache.stats().misses == 0


def test_cache_invalidate_and_clear(galleries) -> None:
    cache = GalleryCache()
    cache.get("b", "a", lambda _: ("1", galleries["a"]))
    cache.get("b", "c", lambda _: ("1", galleries["c"]))
    assert cache.invalidate("b", "a") and not cache.invalidate("b", "a")
    assert cache.entries() == [("b", "c", "1")]
    assert cache.nbytes == cache.peek("b", "c").nbytes
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.stats().misses == 0


def test_gallery_cache_imports_without_torch() -> None:
    """Beyond test_torch_free.py: a Lambda without torch can load and search."""
    code = (
        "import numpy as np\n"
        "from facegate.gallery.cache import GalleryCache\n"
        "from facegate.gallery.index import GalleryIndex\n"
        "index = GalleryIndex(np.eye(4, dtype=np.float32), list('abcd'), threshold=0.5)\n"
        "print(index.search(np.eye(4)[2], k=1).best.subject_id)\n"
    )
    done = run_without_torch(code)
    assert done.returncode == 0, done.stderr or "gallery_cache imported torch or the pipeline"
    assert done.stdout.strip() == "c"
