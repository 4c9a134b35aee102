"""ANN shortlists (faiss) for large galleries: the same answers as exact search where it
matters, used only for the gallery version they were built from, erased with the person.

Small galleries with small indexes (16 lists): the code paths are the ones a 10M-row gallery
takes, only the parameters are scaled down (``bench/ann_bench.py`` measures the large ones).
"""

from __future__ import annotations

import numpy as np
import pytest
from tests_support import erasure_key_for_tests, unit_rows

from facegate.batch.erasure import ANN_INDEX, Eraser
from facegate.errors import ModelMismatchError, ValidationError
from facegate.gallery.ann import AnnIndex, AnnParams, AnnPayload
from facegate.gallery.cache import GalleryCache
from facegate.gallery.format import GalleryMeta, build_gallery_table
from facegate.gallery.index import GalleryIndex
from facegate.storage import keys as layout
from facegate.storage.galleries import GalleryStore
from facegate.storage.gallery_ann import build_gallery_ann, gallery_loader, read_manifest
from facegate.storage.tombstones import Tombstones

SMALL = AnnParams("IVF16,PQ32x4fs", nprobe=4, shortlist=64)
DIM = 128


def _table(embeddings: np.ndarray, subjects: list[str], meta: GalleryMeta):
    n = len(subjects)
    return build_gallery_table(
        subject_ids=subjects,
        image_keys=[f"uploads/g/{s}/{i}.jpg" for i, s in enumerate(subjects)],
        face_indices=np.zeros(n, np.int32),
        bboxes=np.zeros((n, 4), np.float32),
        det_scores=np.ones(n, np.float32),
        embeddings=embeddings,
        meta=meta,
    )


def _blocks(matrix: np.ndarray) -> list[np.ndarray]:
    return [matrix[s : s + 1000] for s in range(0, len(matrix), 1000)]


@pytest.fixture(scope="module")
def real_faces(pipeline, faces_dir) -> dict[str, np.ndarray]:
    return {
        path.stem: pipeline.process(path.read_bytes()).primary.vector
        for path in sorted(faces_dir.glob("*.jpg"))
    }


def test_an_indexed_gallery_answers_the_same_top1_as_exact_search_on_real_photos(
    real_faces, pipeline
):
    """Enrolled: one photo of each of the four people, among 4,000 distractor rows. Probes:
    the other photo of person a and of person b, and both impostors' photos as strangers."""
    enrolled = ["person_a_1", "person_b_1", "impostor_1", "impostor_2"]
    dim = real_faces["person_a_1"].shape[0]
    rows = np.vstack(
        [unit_rows(np.random.default_rng(3), 4000, dim)]
        + [real_faces[name][None, :] for name in enrolled]
    ).astype(np.float32)
    subjects = (
        [f"d{i}" for i in range(4000)]
        + [n.rsplit("_", 1)[0] for n in enrolled[:2]]
        + [
            "impostor_1",
            "impostor_2",
        ]
    )
    exact = GalleryIndex(rows, subjects, threshold=pipeline.threshold)
    served = exact.with_ann(AnnIndex.build(_blocks(rows), len(rows), dim, SMALL))
    assert exact.ann is None and served.ann is not None
    for probe, who in [("person_a_2", "person_a"), ("person_b_2", "person_b")]:
        want, got = exact.search(real_faces[probe], 5), served.search(real_faces[probe], 5)
        assert want.best is not None and want.best.subject_id == who
        assert got.best is not None and got.best.subject_id == who
        assert got.best.similarity == pytest.approx(want.best.similarity, abs=1e-6)
        assert got.best.row == want.best.row


def test_a_shortlist_with_too_few_subjects_is_widened_until_it_has_k():
    """One subject owns the 500 rows nearest the query: a 64-row shortlist holds one subject;
    widened, the top 5 subjects are the exact search's."""
    rng = np.random.default_rng(0)
    q = unit_rows(rng, 1, DIM)[0]
    crowd = q + 0.05 * rng.standard_normal((500, DIM)).astype(np.float32)
    crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
    rows = np.vstack([crowd, unit_rows(rng, 3500, DIM)]).astype(np.float32)
    subjects = ["crowd"] * 500 + [f"s{i}" for i in range(3500)]
    exact = GalleryIndex(rows, subjects, threshold=0.3)
    served = exact.with_ann(AnnIndex.build(_blocks(rows), len(rows), DIM, SMALL))
    want = [m.subject_id for m in exact.search(q, 5).candidates]
    got = [m.subject_id for m in served.search(q, 5).candidates]
    assert len(got) == 5 and got[0] == "crowd"
    assert got == want
    # Per row the shortlist is approximate among 500 near-equal rows, but every similarity
    # is the exact one and the rows are ranked by it.
    flat = served.search(q, 5, per_subject=False).candidates
    sims = [m.similarity for m in flat]
    assert {m.subject_id for m in flat} == {"crowd"} and sims == sorted(sims, reverse=True)
    assert sims == pytest.approx([float(rows[m.row] @ q) for m in flat], abs=1e-6)


def test_an_index_of_another_gallery_is_refused():
    rows = unit_rows(np.random.default_rng(1), 2000, DIM)
    ann = AnnIndex.build(_blocks(rows), 2000, DIM, SMALL)
    other = GalleryIndex(rows[:1500], [f"s{i}" for i in range(1500)], threshold=0.3)
    with pytest.raises(ModelMismatchError):
        other.with_ann(ann)


# -- on S3 (moto) -------------------------------------------------------------------------

META = GalleryMeta(model_id="sface", weights_sha256="cd" * 32, dim=DIM, threshold=0.4)


@pytest.fixture
def store(fresh_aws) -> GalleryStore:
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    return GalleryStore(fresh_aws.s3, fresh_aws.bucket)


def _publish(store: GalleryStore, gallery: str, rows: np.ndarray, subjects: list[str]) -> None:
    store.write_table(store.gallery_key(gallery), _table(rows, subjects, META))


def test_a_gallery_is_searched_through_its_index_only_while_it_is_the_version_indexed(store):
    rng = np.random.default_rng(2)
    rows = unit_rows(rng, 3000, DIM)
    subjects = [f"s{i}" for i in range(3000)]
    _publish(store, "big", rows, subjects)
    cache = GalleryCache()
    load = gallery_loader(store.objects, "big")
    key = store.gallery_key("big")
    assert cache.get(store.bucket, key, load).ann is None  # no index yet: exact

    assert build_gallery_ann(store.objects, "big", min_rows=5000) is None  # too small
    manifest = build_gallery_ann(store.objects, "big", min_rows=1000, params=SMALL)
    assert manifest is not None and manifest.gallery_rows == 3000
    assert read_manifest(store.objects, "big") == manifest
    # A warm cache picks the new index up: the loader's etag covers the manifest too.
    served = cache.get(store.bucket, key, load)
    assert served.ann is not None and served.ann.params == SMALL
    probe = rows[1234] + 0.01 * rng.standard_normal(DIM).astype(np.float32)
    assert served.search(probe, 1).candidates[0].subject_id == "s1234"

    # Recompacted without s1234 (an erasure, a deletion): the index names the old version,
    # so the gallery is searched exactly and s1234 is gone.
    keep = [i for i in range(3000) if i != 1234]
    _publish(store, "big", rows[keep], [subjects[i] for i in keep])
    after = cache.get(store.bucket, key, load)
    assert after.ann is None and after.n_rows == 2999
    assert "s1234" not in [m.subject_id for m in after.search(probe, 5).candidates]
    etag, payload = load(None)
    assert not isinstance(payload, AnnPayload) and "|" in etag

    # Rebuilt: served through the new index, and the old index object is deleted.
    rebuilt = build_gallery_ann(store.objects, "big", min_rows=1000, params=SMALL)
    assert rebuilt is not None and rebuilt.index_key != manifest.index_key
    assert cache.get(store.bucket, key, load).ann is not None
    assert [
        k for k in store.objects.list_keys(layout.ann_prefix("big")) if k.endswith(".faiss")
    ] == [rebuilt.index_key]


def test_an_erasure_in_the_gallery_removes_every_version_of_its_index(store, fresh_aws):
    rows = unit_rows(np.random.default_rng(4), 2000, DIM)
    subjects = ["ann"] + [f"s{i}" for i in range(1999)]
    store.write_table(store.part_key("big", "p1"), _table(rows, subjects, META))
    _publish(store, "big", rows, subjects)
    build_gallery_ann(store.objects, "big", min_rows=1000, params=SMALL)
    build_gallery_ann(store.objects, "big", min_rows=1000, params=SMALL)  # a second version
    prefix = layout.ann_prefix("big")
    assert len(store.objects.versions(prefix)) >= 3  # index, manifest (x2), delete marker
    tombstones = Tombstones(fresh_aws.dynamodb, fresh_aws.settings.table, erasure_key_for_tests())
    eraser = Eraser(fresh_aws.s3, fresh_aws.bucket, tombstones)
    plan = eraser.plan("ann", "gallery:big", "2026-01-01T00:00:00Z", ["big"])
    assert ANN_INDEX in {t.kind for t in plan.tasks}
    receipt = eraser.erase("ann", "gallery:big")
    assert store.objects.versions(prefix) == []
    assert receipt.totals()["gallery_ann"]["objects"] == 1
    served = GalleryCache().get(
        store.bucket, store.gallery_key("big"), gallery_loader(store.objects, "big")
    )
    assert served.ann is None
    assert "ann" not in served.subject_names.to_pylist()


def test_a_gallery_too_small_for_an_index_is_refused_with_the_reason():
    rows = unit_rows(np.random.default_rng(5), 500, DIM)
    with pytest.raises(ValidationError, match="too few"):
        AnnIndex.build(_blocks(rows), 500, DIM, AnnParams.for_rows(500, DIM))
    # The default parameters train every list on enough rows.
    for n in (1000, 5000, 1_000_000, 10_000_000):
        params = AnnParams.for_rows(n, 256)
        assert n >= 39 * params.nlist and params.nprobe == max(8, params.nlist // 8)


def test_a_gallery_with_a_delta_is_served_merged_and_indexed_as_served(store):
    """Compacted, then compacted again with new parts (a delta on top of the base): readers
    see both generations, the new rows winning; the index is built over what they see and
    serves only that pair of versions."""
    from dataclasses import replace

    rng = np.random.default_rng(8)
    rows = unit_rows(rng, 3000, DIM)
    subjects = [f"s{i}" for i in range(3000)]
    old = replace(META, created_at="2026-01-01T00:00:00Z")
    store.write_table(store.part_key("big", "p1"), _table(rows, subjects, old))
    assert store.compact("big").mode == "full"
    # s7's photo re-embedded (a new vector for the same image key), and 20 new subjects.
    moved = unit_rows(rng, 1, DIM)[0]
    fresh = unit_rows(rng, 20, DIM)
    newer = replace(META, created_at="2026-02-01T00:00:00Z")
    table = _table(
        np.vstack([rows[:7], moved[None], fresh]),
        [*subjects[:8]] + [f"n{i}" for i in range(20)],
        newer,
    )
    store.write_table(store.part_key("big", "p2"), table)
    report = store.compact("big")
    assert (report.mode, report.parts_read, report.rows_out) == ("incremental", 1, 3020)
    assert store.objects.exists(layout.delta_key("big"))

    cache, key = GalleryCache(), store.gallery_key("big")
    load = gallery_loader(store.objects, "big")
    served = cache.get(store.bucket, key, load)
    assert served.n_rows == 3020 and served.ann is None
    hit = served.search(moved, 1).candidates[0]
    assert hit.subject_id == "s7" and hit.similarity > 0.999  # the delta's row, not the base's
    assert served.search(fresh[3], 1).candidates[0].subject_id == "n3"

    # The index covers the base; the delta's rows (s7's new one included) are rescored
    # with every shortlist.
    manifest = build_gallery_ann(store.objects, "big", min_rows=1000, params=SMALL)
    assert manifest is not None and manifest.gallery_rows == 3000
    indexed = cache.get(store.bucket, key, load)
    assert indexed.ann is not None and indexed.n_rows == 3020
    hit = indexed.search(moved, 1).candidates[0]
    assert hit.subject_id == "s7" and hit.similarity > 0.999
    assert indexed.search(fresh[3], 1).candidates[0].subject_id == "n3"
    probe = rows[2345] + 0.01 * rng.standard_normal(DIM).astype(np.float32)
    probe /= np.linalg.norm(probe)
    assert indexed.search(probe, 1).candidates[0].subject_id == "s2345"  # a base row

    # Another incremental run changes only the delta: the index still serves the base.
    late = unit_rows(rng, 1, DIM)
    store.write_table(store.part_key("big", "p3"), _table(late, ["late"], newer))
    assert store.compact("big").mode == "incremental"
    after = cache.get(store.bucket, key, load)
    assert after.ann is not None and after.n_rows == 3021
    assert after.search(late[0], 1).candidates[0].subject_id == "late"
    # A full run writes a new base: exact until the index is rebuilt.
    store.compact("big", full=True)
    rebuilt = cache.get(store.bucket, key, load)
    assert rebuilt.ann is None and rebuilt.n_rows == 3021


def test_rows_added_after_the_index_are_rescored_with_every_shortlist():
    """An index of the first 2,990 rows serves a gallery of 3,000 only when told the 10 rows
    it does not know; a search then finds them (exactly scored) as it finds the others."""
    rows = unit_rows(np.random.default_rng(9), 3000, DIM)
    gallery = GalleryIndex(rows, [f"s{i}" for i in range(3000)], threshold=0.5)
    ann = AnnIndex.build(_blocks(rows[:2990]), 2990, DIM, SMALL)
    with pytest.raises(ModelMismatchError, match="does not fit"):
        gallery.with_ann(ann)
    served = gallery.with_ann(ann, always=np.arange(2990, 3000))
    for i in (5, 1500, 2995):
        hit = served.search(rows[i], 1).candidates[0]
        assert (hit.subject_id, hit.row) == (f"s{i}", i) and hit.similarity > 0.999
