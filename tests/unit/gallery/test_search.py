"""Exact top-k search: correctness against brute force, aggregation, thresholds, streaming."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from tests_support import unit_rows

from facegate.errors import ModelMismatchError, ValidationError
from facegate.gallery.format import GalleryMeta, build_gallery_table, write_gallery
from facegate.gallery.search import (
    Match,
    SearchResult,
    check_k,
    check_query,
    check_threshold,
    row_similarities,
    search_gallery,
    search_parquet_streaming,
    top_k,
)

DIM = 32
SHA = "cd" * 32


def make_gallery(
    n: int, n_subjects: int, seed: int = 0, threshold: float = 0.5, dim: int = DIM
) -> tuple[pa.Table, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    emb = unit_rows(rng, n, dim)
    subjects = [f"subj-{int(i)}" for i in rng.integers(0, n_subjects, n)]
    table = build_gallery_table(
        subject_ids=subjects,
        image_keys=[f"img/{i}.jpg" for i in range(n)],
        face_indices=np.zeros(n, np.int32),
        bboxes=np.tile(np.array([0, 0, 10, 10], np.float32), (n, 1)),
        det_scores=np.ones(n, np.float32),
        embeddings=emb,
        meta=GalleryMeta(model_id="sface", weights_sha256=SHA, dim=dim, threshold=threshold),
    )
    return table, emb, subjects


def reference_top_k(queries: np.ndarray, gallery: np.ndarray, k: int):
    """Brute force in float64: full stable sort by (score desc, index asc)."""
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def reference_subjects(query, emb, subjects, k):
    """Per subject, its best row; subjects ranked by that row's score."""
    scores = emb @ query
    best: dict[str, int] = {}
    for row in np.argsort(-scores, kind="stable"):
        best.setdefault(subjects[row], int(row))
    ranked = sorted(best.items(), key=lambda kv: (-scores[kv[1]], kv[1]))
    return [(s, r) for s, r in ranked[:k]]


# ---------------------------------------------------------------------------- top_k


@pytest.mark.parametrize("k", [1, 5, 64, 200, 500])
def test_top_k_matches_brute_force(k: int) -> None:
    rng = np.random.default_rng(1)
    gallery = unit_rows(rng, 200, DIM)
    queries = unit_rows(rng, 7, DIM)
    idx, scores = top_k(queries, gallery, k)
    ref_idx, ref_scores = reference_top_k(queries, gallery, k)
    kk = min(k, 200)
    assert idx.shape == scores.shape == (7, kk)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_top_k_single_query_gives_one_row() -> None:
    rng = np.random.default_rng(2)
    gallery = unit_rows(rng, 50, DIM)
    idx, scores = top_k(gallery[17], gallery, 3)
    assert idx.shape == (1, 3)
    assert idx[0, 0] == 17
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_top_k_k_larger_than_gallery() -> None:
    rng = np.random.default_rng(3)
    gallery = unit_rows(rng, 4, DIM)
    idx, _ = top_k(unit_rows(rng, 2, DIM), gallery, 10)
    assert idx.shape == (2, 4)
    assert sorted(idx[0].tolist()) == [0, 1, 2, 3]


def test_top_k_empty_gallery() -> None:
    rng = np.random.default_rng(4)
    idx, scores = top_k(unit_rows(rng, 3, DIM), np.empty((0, DIM), np.float32), 5)
    assert idx.shape == scores.shape == (3, 0)
    assert idx.dtype == np.int64 and scores.dtype == np.float32


def test_top_k_dim_mismatch_is_model_mismatch() -> None:
    rng = np.random.default_rng(5)
    with pytest.raises(ModelMismatchError):
        top_k(unit_rows(rng, 1, DIM + 1), unit_rows(rng, 10, DIM), 3)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
def test_top_k_refuses_bad_k(k: object) -> None:
    rng = np.random.default_rng(6)
    with pytest.raises(ValidationError):
        top_k(unit_rows(rng, 1, DIM), unit_rows(rng, 10, DIM), k)  # type: ignore[arg-type]


def test_top_k_refuses_unnormalised_or_nan_query() -> None:
    rng = np.random.default_rng(7)
    gallery = unit_rows(rng, 10, DIM)
    with pytest.raises(ValidationError):
        top_k(gallery[0] * 3, gallery, 3)
    bad = gallery[0].copy()
    bad[0] = np.nan
    with pytest.raises(ValidationError):
        top_k(bad, gallery, 3)


def test_top_k_ties_prefer_lower_index() -> None:
    rng = np.random.default_rng(8)
    base = unit_rows(rng, 1, DIM)
    others = unit_rows(rng, 30, DIM)
    # Rows 3, 9, 14, 21, 27 are the same vector; ask for fewer than the tie group.
    gallery = others.copy()
    tied = [3, 9, 14, 21, 27]
    gallery[tied] = base
    for k in (1, 2, 4, 5, 6):
        idx, _ = top_k(base, gallery, k)
        assert idx[0, : min(k, 5)].tolist() == tied[: min(k, 5)]


# ---------------------------------------------------------------------------- search_gallery


def test_search_aggregates_per_subject() -> None:
    table, emb, subjects = make_gallery(n=300, n_subjects=25, seed=10)
    query = emb[42]
    result = search_gallery(query, table, k=5, threshold=0.9)
    expected = reference_subjects(query, emb, subjects, 5)
    assert [(m.subject_id, m.row) for m in result.candidates] == expected
    assert len({m.subject_id for m in result.candidates}) == 5
    assert [m.rank for m in result.candidates] == [1, 2, 3, 4, 5]
    top = result.candidates[0]
    assert top == Match(subjects[42], "img/42.jpg", top.similarity, 1, 42)
    assert top.similarity == pytest.approx(1.0, abs=1e-5)
    assert result.best == top and result.is_match
    assert result.matches == (top,)  # random 32-d unit vectors stay far below 0.9


def test_search_aggregation_skips_a_subjects_other_rows() -> None:
    rng = np.random.default_rng(11)
    query = unit_rows(rng, 1, DIM)[0]
    near = query + 0.05 * unit_rows(rng, 4, DIM)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    gallery = np.vstack([unit_rows(rng, 6, DIM), near])
    subjects = ["a", "b", "c", "d", "e", "f", "alice", "alice", "alice", "bob"]
    result = search_gallery(query, gallery, k=3, threshold=0.9, subject_ids=subjects)
    ids = [m.subject_id for m in result.candidates]
    assert ids[:2] in (["alice", "bob"], ["bob", "alice"])
    assert ids.count("alice") == 1
    assert [m.subject_id for m in result.matches] == ids[:2]
    assert all(m.image_key is None for m in result.candidates)


def test_search_rows_mode_equals_top_k() -> None:
    table, emb, _ = make_gallery(n=120, n_subjects=5, seed=12)
    query = unit_rows(np.random.default_rng(0), 1, DIM)[0]
    result = search_gallery(query, table, k=10, threshold=0.5, per_subject=False)
    idx, scores = top_k(query, emb, 10)
    assert [m.row for m in result.candidates] == idx[0].tolist()
    # top_k uses BLAS, search a per-row dot product: equal up to float32 rounding.
    np.testing.assert_allclose([m.similarity for m in result.candidates], scores[0], atol=1e-6)


def test_search_says_no_match_below_threshold() -> None:
    table, _, _ = make_gallery(n=100, n_subjects=20, seed=13)
    stranger = unit_rows(np.random.default_rng(99), 1, DIM)[0]
    result = search_gallery(stranger, table, k=3, threshold=0.9)
    assert isinstance(result, SearchResult)
    assert result.best is None
    assert not result.is_match
    assert result.matches == ()
    assert len(result.candidates) == 3  # near misses are still reported
    assert all(m.similarity < 0.9 for m in result.candidates)
    assert result.to_dict()["best"] is None


def test_search_threshold_is_inclusive() -> None:
    table, emb, _ = make_gallery(n=20, n_subjects=20, seed=14)
    second = search_gallery(emb[5], table, k=2, threshold=0.5).candidates[1]
    at_threshold = search_gallery(emb[5], table, k=2, threshold=second.similarity)
    assert at_threshold.matches[-1].row == second.row
    above = np.nextafter(np.float32(second.similarity), np.float32(1))
    assert len(search_gallery(emb[5], table, k=2, threshold=float(above)).matches) == 1


def test_search_threshold_defaults_to_gallery_metadata() -> None:
    table, emb, _ = make_gallery(n=50, n_subjects=10, seed=15, threshold=0.42)
    assert search_gallery(emb[0], table, k=2).threshold == pytest.approx(0.42)
    with pytest.raises(ValidationError, match="threshold"):
        search_gallery(emb[0], emb, k=2, subject_ids=["x"] * 50)


def test_search_empty_gallery_is_no_match() -> None:
    result = search_gallery(
        unit_rows(np.random.default_rng(0), 1, DIM)[0],
        np.empty((0, DIM), np.float32),
        k=3,
        threshold=0.5,
        subject_ids=[],
    )
    assert result.candidates == () and result.best is None


def test_search_refuses_mismatches() -> None:
    table, emb, _ = make_gallery(n=10, n_subjects=3, seed=16)
    with pytest.raises(ModelMismatchError):
        search_gallery(unit_rows(np.random.default_rng(0), 1, DIM + 4)[0], table)
    with pytest.raises(ValidationError):
        search_gallery(emb[:2], table)  # one query at a time
    with pytest.raises(ValidationError):
        search_gallery(emb[0], emb, threshold=0.5)  # no subject ids
    with pytest.raises(ValidationError):
        search_gallery(emb[0], emb, threshold=0.5, subject_ids=["a"] * 9)


# ---------------------------------------------------------------------------- streaming


def assert_same_result(a: SearchResult, b: SearchResult) -> None:
    assert a.threshold == b.threshold
    assert [(m.subject_id, m.image_key, m.rank, m.row) for m in a.candidates] == [
        (m.subject_id, m.image_key, m.rank, m.row) for m in b.candidates
    ]
    # Exact: per-row scoring does not depend on how the rows were batched.
    assert [m.similarity for m in a.candidates] == [m.similarity for m in b.candidates]


@pytest.mark.parametrize("batch_rows", [1, 7, 64, 100, 5000])
@pytest.mark.parametrize("per_subject", [True, False])
def test_streaming_equals_in_memory(tmp_path, batch_rows: int, per_subject: bool) -> None:
    table, emb, _ = make_gallery(n=700, n_subjects=40, seed=20)
    path = tmp_path / "g.parquet"
    write_gallery(table, path, row_group_size=100)
    rng = np.random.default_rng(21)
    for query in [emb[3], emb[650], *unit_rows(rng, 3, DIM)]:
        streamed = search_parquet_streaming(
            path, query, k=8, batch_rows=batch_rows, per_subject=per_subject
        )
        in_memory = search_gallery(query, table, k=8, per_subject=per_subject)
        assert_same_result(streamed, in_memory)
        assert len(streamed.candidates) == 8


def test_streaming_ties_across_batches(tmp_path) -> None:
    table, emb, subjects = make_gallery(n=60, n_subjects=60, seed=22)
    dup = emb.copy()
    dup[[5, 25, 45]] = dup[50]  # same vector in different batches
    table = build_gallery_table(
        subject_ids=subjects,
        image_keys=[f"img/{i}.jpg" for i in range(60)],
        face_indices=np.zeros(60, np.int32),
        bboxes=np.zeros((60, 4), np.float32),
        det_scores=np.ones(60, np.float32),
        embeddings=dup,
        meta=GalleryMeta(model_id="sface", weights_sha256=SHA, dim=DIM, threshold=0.5),
    )
    path = tmp_path / "ties.parquet"
    write_gallery(table, path, row_group_size=20)
    for k in (1, 2, 3):
        streamed = search_parquet_streaming(path, dup[50], k=k, batch_rows=20, per_subject=False)
        in_memory = search_gallery(dup[50], table, k=k, per_subject=False)
        assert_same_result(streamed, in_memory)
        assert [m.row for m in streamed.candidates] == [5, 25, 45][:k]


def test_streaming_no_match_and_k_beyond_gallery(tmp_path) -> None:
    table, _, subjects = make_gallery(n=30, n_subjects=4, seed=23)
    path = tmp_path / "g.parquet"
    write_gallery(table, path, row_group_size=8)
    stranger = unit_rows(np.random.default_rng(5), 1, DIM)[0]
    result = search_parquet_streaming(path, stranger, k=50, batch_rows=8, threshold=0.95)
    assert result.best is None
    assert {m.subject_id for m in result.candidates} == set(subjects)


def test_streaming_refuses_other_model_and_dim(tmp_path) -> None:
    table, emb, _ = make_gallery(n=10, n_subjects=3, seed=24)
    path = tmp_path / "g.parquet"
    write_gallery(table, path)
    with pytest.raises(ModelMismatchError):
        search_parquet_streaming(path, emb[0], expected_model_id="arcface")
    with pytest.raises(ModelMismatchError):
        search_parquet_streaming(path, unit_rows(np.random.default_rng(0), 1, DIM * 2)[0])
    with pytest.raises(ValidationError):
        search_parquet_streaming(path, emb[0], batch_rows=0)


def test_streaming_refuses_truncated_file(tmp_path) -> None:
    import pyarrow.parquet as pq

    table, emb, _ = make_gallery(n=10, n_subjects=3, seed=25)
    path = tmp_path / "short.parquet"
    pq.write_table(table.slice(0, 4), path)  # metadata still claims 10 rows
    with pytest.raises(ValidationError, match="rows"):
        search_parquet_streaming(path, emb[0])


# ---------------------------------------------------------------------------- public helpers


def test_row_similarities_do_not_depend_on_which_rows_are_scored_together() -> None:
    """What lets another backend rescore a few candidates and get search_gallery's numbers."""
    rng = np.random.default_rng(30)
    gallery = unit_rows(rng, 1000, 128)
    query = unit_rows(rng, 1, 128)[0]
    full = row_similarities(query, gallery)
    assert full.shape == (1000,) and full.dtype == np.float32
    picked = rng.permutation(1000)[:37]
    np.testing.assert_array_equal(row_similarities(query, gallery[picked]), full[picked])
    for size in (1, 3, 64, 999):
        np.testing.assert_array_equal(row_similarities(query, gallery[:size]), full[:size])
    np.testing.assert_allclose(full, gallery.astype(np.float64) @ query, atol=1e-6)
    bad = gallery[:4].copy()
    bad[2, 0] = np.inf
    with pytest.raises(ValidationError, match="non-finite"):
        row_similarities(query, bad)


def test_public_checks() -> None:
    assert check_k(np.int64(3)) == 3
    for bad_k in (0, -1, 2.5, True, None):
        with pytest.raises(ValidationError):
            check_k(bad_k)
    assert check_threshold(np.float32(0.25)) == 0.25 and check_threshold(-1) == -1.0
    for bad_t in (None, 1.01, "0.5", False):
        with pytest.raises(ValidationError):
            check_threshold(bad_t)
    rng = np.random.default_rng(31)
    q = unit_rows(rng, 1, DIM)
    assert check_query(q).shape == (DIM,) and check_query(q[0], DIM).dtype == np.float32
    with pytest.raises(ModelMismatchError):
        check_query(q[0], DIM + 1)
    with pytest.raises(ValidationError):
        check_query(unit_rows(rng, 2, DIM))
    with pytest.raises(ValidationError):
        check_query(q[0] * 2)
