"""Gallery compaction: pure merging rules, then S3 and DynamoDB on moto, checking AWS state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_support import erasure_key_for_tests, erasures_in, keys_of, run_first, unit_rows

from facegate.errors import (
    ModelMismatchError,
    ObjectNotFoundError,
    StorageError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.gallery.compaction import compact_tables
from facegate.gallery.format import (
    GalleryMeta,
    build_gallery_table,
    build_rejects_table,
    gallery_embeddings,
    read_gallery,
)
from facegate.settings import Settings
from facegate.storage import compactor
from facegate.storage.galleries import GalleryStore, summarise
from facegate.storage.gallery_ann import served_view
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import ErasureKey, Tombstones

REGION = "eu-west-1"
BUCKET = "facegate-compact-test"
TABLE = "facegate-compact-subjects"
DIM = 8
MODEL = "sface"
SHA = "cd" * 32
META = GalleryMeta(model_id=MODEL, weights_sha256=SHA, dim=DIM, threshold=0.36)
T1 = "2024-03-01T10:00:00Z"
T2 = "2024-03-02T10:00:00Z"
T3 = "2024-03-03T10:00:00Z"


def part(
    rng: np.random.Generator,
    rows: Sequence[tuple[str, str, int]],
    created_at: str,
    meta: GalleryMeta = META,
    uploaded_at: str | None = None,
) -> pa.Table:
    """A gallery part of ``(subject_id, image_key, face_index)`` rows with random embeddings,
    built at ``created_at`` from photos uploaded at ``uploaded_at`` (default: then too)."""
    n = len(rows)
    return build_gallery_table(
        subject_ids=[r[0] for r in rows],
        image_keys=[r[1] for r in rows],
        face_indices=np.array([r[2] for r in rows], dtype=np.int32),
        bboxes=np.tile(np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), (n, 1)),
        det_scores=np.full(n, 0.99, dtype=np.float32),
        embeddings=unit_rows(rng, n, meta.dim),
        meta=replace(meta, created_at=created_at),
        source_times=[uploaded_at or created_at] * n,
    )


def row_embedding(table: pa.Table, image_key: str, face_index: int = 0) -> np.ndarray:
    index = [k[1:] for k in keys_of(table)].index((image_key, face_index))
    return gallery_embeddings(table)[index]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


# --------------------------------------------------------------------------------------
# compact_tables
# --------------------------------------------------------------------------------------


def test_duplicate_photo_keeps_the_row_of_the_newer_part(rng):
    old = part(rng, [("alice", "a/1.jpg", 0), ("alice", "a/2.jpg", 0)], T1)
    new = part(rng, [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)], T2)
    merged = compact_tables([new, old])  # recency comes from metadata, not list order
    assert keys_of(merged) == [
        ("alice", "a/1.jpg", 0),
        ("alice", "a/2.jpg", 0),
        ("bob", "b/1.jpg", 0),
    ]
    np.testing.assert_array_equal(row_embedding(merged, "a/1.jpg"), gallery_embeddings(new)[0])
    np.testing.assert_array_equal(row_embedding(merged, "a/2.jpg"), gallery_embeddings(old)[1])


def test_same_photo_other_face_is_not_a_duplicate(rng):
    first = part(rng, [("alice", "group.jpg", 0)], T1)
    second = part(rng, [("bob", "group.jpg", 1)], T2)
    assert keys_of(compact_tables([first, second])) == [
        ("alice", "group.jpg", 0),
        ("bob", "group.jpg", 1),
    ]


def test_parts_created_in_the_same_instant_later_in_the_list_wins(rng):
    first = part(rng, [("alice", "a/1.jpg", 0)], T1)
    second = part(rng, [("alice", "a/1.jpg", 0)], T1)
    merged = compact_tables([first, second])
    assert merged.num_rows == 1
    np.testing.assert_array_equal(gallery_embeddings(merged)[0], gallery_embeddings(second)[0])


def test_deleted_subject_is_dropped_and_a_later_enrolment_kept(rng):
    before = part(rng, [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)], T1)
    at_deletion = part(rng, [("bob", "b/2.jpg", 0)], T2)
    after = part(rng, [("bob", "b/3.jpg", 0), ("carol", "c/1.jpg", 0)], T3)
    merged = compact_tables([before, at_deletion, after], deleted={"bob": T2, "nobody": T3})
    assert keys_of(merged) == [
        ("alice", "a/1.jpg", 0),
        ("bob", "b/3.jpg", 0),
        ("carol", "c/1.jpg", 0),
    ]


def test_a_part_built_after_the_erasure_from_older_photos_never_brings_them_back(rng):
    """A worker in flight during the erasure, or a notification redriven weeks later, builds
    its part after the tombstone: its rows still date from their upload, so they go."""
    late = part(rng, [("bob", "b/1.jpg", 0), ("carol", "c/1.jpg", 0)], T3, uploaded_at=T1)
    uploaded_again = part(rng, [("bob", "b/9.jpg", 0)], T3, uploaded_at=T3)
    merged = compact_tables([late, uploaded_again], deleted={"bob": T2})
    assert keys_of(merged) == [("bob", "b/9.jpg", 0), ("carol", "c/1.jpg", 0)]
    (kept,) = [r for r in merged.to_pylist() if r["subject_id"] == "carol"]
    assert kept["source_at"].isoformat() == "2024-03-01T10:00:00+00:00"  # the upload time stays


def test_deletion_times_compare_as_instants_not_strings(rng):
    parts = [part(rng, [("bob", "b/1.jpg", 0)], "2024-03-01T10:00:00Z")]
    kept = compact_tables(parts, deleted={"bob": "2024-03-01T10:59:59+01:00"})
    dropped = compact_tables(parts, deleted={"bob": "2024-03-01T10:00:00.000001Z"})
    assert kept.num_rows == 1
    assert dropped.num_rows == 0


def test_relabelled_photo_follows_its_newest_label_into_deletion(rng):
    """Dedup comes before deletion: the newest part says the photo is bob's, bob is deleted."""
    old = part(rng, [("alice", "x.jpg", 0)], T1)
    new = part(rng, [("bob", "x.jpg", 0)], T2)
    assert compact_tables([old, new], deleted={"bob": T3}).num_rows == 0


def test_rows_are_sorted_by_subject_image_and_face(rng):
    rows = [
        ("carol", "c/1.jpg", 0),
        ("alice", "z.jpg", 1),
        ("alice", "z.jpg", 0),
        ("bob", "b/1.jpg", 0),
        ("alice", "a.jpg", 0),
    ]
    merged = compact_tables([part(rng, rows[:2], T1), part(rng, rows[2:], T2)])
    assert keys_of(merged) == sorted(rows)


@pytest.mark.parametrize(
    "other",
    [
        replace(META, model_id="arcface"),
        replace(META, weights_sha256="ef" * 32),
        replace(META, dim=DIM * 2),
    ],
    ids=["model_id", "weights_sha256", "dim"],
)
def test_parts_of_different_models_are_refused(rng, other):
    mine = part(rng, [("alice", "a/1.jpg", 0)], T1)
    theirs = part(rng, [("bob", "b/1.jpg", 0)], T2, meta=other)
    with pytest.raises(ModelMismatchError, match="part 1"):
        compact_tables([mine, theirs])


def test_expected_model_id_is_enforced(rng):
    parts = [part(rng, [("alice", "a/1.jpg", 0)], T1)]
    with pytest.raises(ModelMismatchError, match="expected 'arcface'"):
        compact_tables(parts, expected_model_id="arcface")
    assert compact_tables(parts, expected_model_id=MODEL).num_rows == 1


def test_result_has_fresh_metadata_of_the_same_model(rng):
    old = part(rng, [("alice", "a/1.jpg", 0)], T1)
    new = part(
        rng, [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)], T2, replace(META, threshold=0.4)
    )
    merged = compact_tables([old, new])
    meta = GalleryMeta.from_json(merged.schema.metadata[b"facegate"])
    assert meta.row_count == merged.num_rows == 2
    assert meta.created_at > T2
    assert (meta.model_id, meta.weights_sha256, meta.dim) == (MODEL, SHA, DIM)
    assert meta.threshold == pytest.approx(0.4)  # the newest calibration


def test_the_merged_gallery_names_a_detector_only_if_every_part_had_it(rng):
    def merged_detector(*detectors: str | None) -> str | None:
        parts = [
            part(rng, [("alice", f"a/{i}.jpg", 0)], T1, replace(META, detector=d))
            for i, d in enumerate(detectors)
        ]
        return GalleryMeta.from_json(compact_tables(parts).schema.metadata[b"facegate"]).detector

    assert merged_detector("yunet", "yunet") == "yunet"
    assert merged_detector("mtcnn", "yunet") is None
    assert merged_detector(None, "yunet") is None


def test_no_parts_and_naive_deletion_times_are_refused(rng):
    with pytest.raises(ValidationError, match="no gallery parts"):
        compact_tables([])
    parts = [part(rng, [("bob", "b/1.jpg", 0)], T1)]
    with pytest.raises(ValidationError, match="time zone"):
        compact_tables(parts, deleted={"bob": "2024-03-01T10:00:00"})
    with pytest.raises(ValidationError, match="ISO-8601"):
        compact_tables(parts, deleted={"bob": "yesterday"})


def test_everything_deleted_gives_an_empty_valid_gallery(rng):
    merged = compact_tables([part(rng, [("bob", "b/1.jpg", 0)], T1)], deleted={"bob": T2})
    assert merged.num_rows == 0
    assert GalleryMeta.from_json(merged.schema.metadata[b"facegate"]).row_count == 0


# --------------------------------------------------------------------------------------
# AWS fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """The names ``fresh_aws`` (conftest.py) gives moto's bucket and table."""
    return Settings(bucket=BUCKET, table=TABLE, aws_region=REGION, aws_endpoint_url=None)


@pytest.fixture
def store(s3) -> GalleryStore:
    return GalleryStore(s3, BUCKET)


@pytest.fixture
def tombstones(ddb) -> Tombstones:
    return Tombstones(ddb, TABLE, erasure_key_for_tests())


def listing(s3) -> dict[str, str]:
    """Every object in the bucket as ``key -> ETag``."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def count_calls(client, operation: str) -> list[int]:
    calls: list[int] = []
    client.meta.events.register(
        f"after-call.{client.meta.service_model.service_id.hyphenize()}.{operation}",
        lambda **_: calls.append(1),
    )
    return calls


def read_s3_gallery(s3, key: str) -> tuple[GalleryMeta, pa.Table]:
    data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return read_gallery(pa.BufferReader(data), expected_model_id=MODEL)


# --------------------------------------------------------------------------------------
# GalleryStore
# --------------------------------------------------------------------------------------


def test_keys_follow_the_layout_and_refuse_path_tricks():
    assert GalleryStore.part_key("staff", "job-1") == "galleries/staff/parts/job-1.parquet"
    assert GalleryStore.rejects_key("staff", "job-1") == "galleries/staff/rejects/job-1.parquet"
    assert GalleryStore.gallery_key("staff") == "galleries/staff/gallery.parquet"
    for gallery, name in [("staff/x", "p"), ("staff", "../p"), ("", "p")]:
        with pytest.raises(ValidationError):
            GalleryStore.part_key(gallery, name)


def test_compact_on_s3_writes_the_gallery_and_leaves_parts_alone(s3, store, rng):
    store.write_table(store.part_key("staff", "p1"), part(rng, [("alice", "a/1.jpg", 0)], T1))
    store.write_table(
        store.part_key("staff", "p2"),
        part(rng, [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0), ("carol", "c/1.jpg", 0)], T2),
    )
    store.write_table(store.part_key("other", "p1"), part(rng, [("dave", "d/1.jpg", 0)], T1))
    before = listing(s3)

    report = store.compact(
        "staff", erasures=erasures_in("gallery:staff", {"bob": T3}), expected_model_id=MODEL
    )

    assert (report.parts_read, report.rows_in, report.rows_out) == (2, 4, 2)
    assert (report.duplicates_dropped, report.deleted_dropped, report.subjects) == (1, 1, 2)
    assert report.key == "galleries/staff/gallery.parquet" and report.seconds >= 0
    assert report.to_dict()["rows_out"] == 2
    after = listing(s3)
    markers = {"galleries/staff/inbox/p1", "galleries/staff/inbox/p2"}
    assert markers <= set(before) and "galleries/other/inbox/p1" in before
    # The parts merged leave the inbox; the other gallery's marker stays.
    assert set(after) == (set(before) - markers) | {report.key, "galleries/staff/compaction.json"}
    assert {k: after[k] for k in before if k not in markers} == {
        k: v for k, v in before.items() if k not in markers
    }  # parts untouched
    head = s3.head_object(Bucket=BUCKET, Key=report.key)
    assert head["ServerSideEncryption"] == "AES256"
    meta, table = read_s3_gallery(s3, report.key)
    assert meta.row_count == 2
    assert keys_of(table) == [("alice", "a/1.jpg", 0), ("carol", "c/1.jpg", 0)]


def test_compact_again_with_more_deletions_drops_them_and_a_full_run_rebuilds_from_parts(
    s3, store, rng
):
    store.write_table(
        store.part_key("staff", "p1"),
        part(rng, [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)], T1),
    )
    assert store.compact("staff").rows_out == 2
    assert (
        store.compact("staff", erasures=erasures_in("gallery:staff", {"alice": T2})).rows_out == 1
    )
    # Incremental runs merge onto the gallery, which no longer has alice; a full rebuild is
    # a view of the parts, which still do (the erasure's own rewrite removes her there).
    assert store.compact("staff").rows_out == 1
    assert store.compact("staff", full=True).rows_out == 2


def test_compact_names_the_offending_part(store, rng):
    store.write_table(store.part_key("staff", "p1"), part(rng, [("alice", "a/1.jpg", 0)], T1))
    store.write_table(
        store.part_key("staff", "p2"),
        part(rng, [("bob", "b/1.jpg", 0)], T2, replace(META, model_id="arcface")),
    )
    with pytest.raises(ModelMismatchError, match=r"galleries/staff/parts/p2\.parquet"):
        store.compact("staff")
    assert not store.exists(store.gallery_key("staff"))


def test_compact_without_parts_is_refused(s3, store):
    with pytest.raises(UnknownGalleryError, match="gallery staff has no parts"):
        store.compact("staff")
    assert listing(s3) == {}


def test_list_parts_follows_pagination(s3, store, rng):
    for i in range(5):
        store.write_table(store.part_key("staff", f"p{i}"), part(rng, [("a", f"{i}.jpg", 0)], T1))
    store.write_table(store.rejects_key("staff", "p0"), build_rejects_table(["x.jpg"], ["no_face"]))
    store.list_page_size = 2
    calls = count_calls(s3, "ListObjectsV2")
    keys = store.list_parts("staff")
    assert keys == [f"galleries/staff/parts/p{i}.parquet" for i in range(5)]
    assert len(calls) == 3


def test_write_table_refuses_unknown_tables_and_read_refuses_non_parquet(s3, store):
    with pytest.raises(ValidationError, match="not a gallery or rejects table"):
        store.write_table("galleries/staff/x.parquet", pa.table({"a": [1]}))
    s3.put_object(Bucket=BUCKET, Key="galleries/staff/parts/bad.parquet", Body=b"not parquet")
    with pytest.raises(ValidationError, match="not a Parquet file"):
        store.read_table("galleries/staff/parts/bad.parquet")
    with pytest.raises(StorageError, match=r"no such object: .*missing\.parquet") as missing:
        store.read_table("galleries/staff/parts/missing.parquet")
    assert missing.value.detail == "NoSuchKey"


# --------------------------------------------------------------------------------------
# summarise
# --------------------------------------------------------------------------------------


def test_summarise_before_and_after_compaction(s3, store, rng):
    store.write_table(store.part_key("staff", "p1"), part(rng, [("alice", "a/1.jpg", 0)], T1))
    store.write_table(
        store.part_key("staff", "p2"),
        part(rng, [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)], T2),
    )
    store.write_table(
        store.rejects_key("staff", "p1"),
        build_rejects_table(["x.jpg", "y.jpg"], ["no_face", "multiple_faces"], ["d", None]),
    )
    store.write_table(store.rejects_key("staff", "p2"), build_rejects_table(["z.jpg"], ["no_face"]))

    raw = summarise(store, "staff")
    assert raw == {
        "gallery": "staff",
        "rows": 3,
        "subjects": 2,
        "parts": 2,
        "rejects": {"multiple_faces": 1, "no_face": 2},
        "model_id": MODEL,
        "weights_sha256": SHA,
        "dim": DIM,
        "threshold": pytest.approx(0.36),
        "built_at": None,
        "compacted": False,
    }

    store.compact("staff", erasures=erasures_in("gallery:staff", {"bob": T3}))
    done = summarise(store, "staff")
    built = read_s3_gallery(s3, store.gallery_key("staff"))[0].created_at
    assert done["compacted"] is True
    assert done["built_at"] == built
    assert (done["rows"], done["subjects"], done["parts"]) == (1, 1, 2)
    assert done["rejects"] == {"multiple_faces": 1, "no_face": 2}


def test_summarise_unknown_gallery_is_refused(store):
    with pytest.raises(UnknownGalleryError, match="gallery ghost not found"):
        summarise(store, "ghost")


# --------------------------------------------------------------------------------------
# Tombstones
# --------------------------------------------------------------------------------------


def test_record_writes_one_item_outside_the_subjects_index_without_the_id(ddb, tombstones):
    stamp = tombstones.record("gallery:staff", "bob@example.com", when="2024-03-02T11:00:00+01:00")
    assert stamp == "2024-03-02T10:00:00.000000Z"
    (item,) = ddb.scan(TableName=TABLE)["Items"]
    digest = erasure_key_for_tests().digest("gallery:staff", "bob@example.com")
    assert item["sk"] == {"S": f"ERASED#{digest}"}
    assert item["deleted_at"] == {"S": stamp}
    assert item["scope"] == {"S": "gallery:staff"}
    assert "kind" not in item
    assert "bob" not in str(item)  # a keyed hash, never the id
    assert SubjectStore(ddb, TABLE).list_subjects()[0] == []
    with pytest.raises(ValidationError):
        tombstones.record("gallery:staff", "bob/../x")
    with pytest.raises(ValidationError):
        tombstones.record("everywhere", "bob")


def test_tombstones_are_scoped(tombstones):
    tombstones.record("gallery:staff", "bob", when=T2)
    erased = tombstones.all()
    assert erased.in_scope("gallery:staff", ["bob", "alice"]) == {
        "bob": "2024-03-02T10:00:00.000000Z"
    }
    assert erased.in_scope("gallery:visitors", ["bob"]) == {}
    assert erased.in_scope("api", ["bob"]) == {}
    assert tombstones.in_scope("gallery:staff", ["bob", "alice"]) == erased.in_scope(
        "gallery:staff", ["bob"]
    )


def test_another_deployments_key_matches_nothing(ddb, tombstones):
    tombstones.record("gallery:staff", "bob", when=T2)
    other = Tombstones(ddb, TABLE, ErasureKey("another deployment's secret"))
    assert other.all().in_scope("gallery:staff", ["bob"]) == {}


def test_record_never_moves_a_deletion_back_in_time(tombstones):
    tombstones.record("gallery:staff", "bob", when=T2)
    assert tombstones.record("gallery:staff", "bob", when=T1) == "2024-03-02T10:00:00.000000Z"
    assert tombstones.record("gallery:staff", "bob", when=T3) == "2024-03-03T10:00:00.000000Z"
    assert tombstones.all().in_scope("gallery:staff", ["bob"]) == {
        "bob": "2024-03-03T10:00:00.000000Z"
    }


def test_record_defaults_to_now(tombstones):
    assert tombstones.record("api", "bob") > T3


def test_all_follows_pagination(ddb, tombstones):
    expected = {f"s{i:02d}": tombstones.record("api", f"s{i:02d}", when=T1) for i in range(30)}
    calls = count_calls(ddb, "Query")
    assert tombstones.all(page_size=7).in_scope("api", expected) == expected
    assert len(calls) >= 5


def test_tombstones_drive_compaction(store, tombstones, rng):
    store.write_table(
        store.part_key("staff", "p1"),
        part(rng, [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)], T1),
    )
    tombstones.record("gallery:staff", "bob", when=T2)
    tombstones.record("gallery:other", "alice", when=T2)
    report = store.compact("staff", erasures=tombstones.all())
    assert (report.rows_out, report.deleted_dropped) == (1, 1)


def _erase_from_every_table(store: GalleryStore, gallery: str, subject: str) -> None:
    """What an erasure does to a gallery's tables (``Eraser._erase_table``): every part and
    ``gallery.parquet`` rewritten, every version, without the person's rows."""
    import pyarrow.compute as pc

    from facegate.storage.scrub import rewrite_table

    for key in [*store.list_parts(gallery), store.gallery_key(gallery)]:
        kind = "gallery" if key == store.gallery_key(gallery) else "gallery_part"

        def write(table: pa.Table, key: str = key) -> object:
            return store.write_table(key, table)

        rewrite_table(store.objects, key, kind, lambda t: pc.equal(t["subject_id"], subject), write)


def test_a_compaction_racing_an_erasure_never_brings_the_person_back(store, rng):
    """The compaction read the parts (bob in them) before the erasure rewrote them and the
    gallery; writing its table then would put bob back until the next run. Its write is
    conditional on the gallery it saw, so it loses the race, reads again and leaves him out."""
    rows = [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)]
    store.write_table(store.part_key("staff", "p1"), part(rng, rows, T1))
    assert store.compact("staff").rows_out == 2
    # A new part, so that the (incremental) run has something to write.
    store.write_table(store.part_key("staff", "p2"), part(rng, [("carol", "c/1.jpg", 0)], T2))
    run_first(store, "write_table", lambda: _erase_from_every_table(store, "staff", "bob"))
    report = store.compact("staff")
    _, table = read_gallery(
        pa.BufferReader(store.objects.get(store.gallery_key("staff")).body),
        expected_model_id=MODEL,
    )
    assert [k[0] for k in keys_of(table)] == ["alice", "carol"]
    assert report.rows_out == 2
    # The erasure wrote the gallery the first try saw merged onto: the retry is a full one.
    assert report.mode == "full"


def test_a_compaction_that_finds_another_s_gallery_written_meanwhile_starts_again(store, rng):
    """Two workers compact a gallery that has none yet: the second to write finds one there
    (its ``if_none_match`` refused), reads everything again and writes over it."""
    store.write_table(store.part_key("staff", "p1"), part(rng, [("alice", "a/1.jpg", 0)], T1))
    other = GalleryStore(store.objects._s3, BUCKET)  # another worker, same bucket
    run_first(store, "write_table", lambda: other.compact("staff"))
    puts = count_calls(store.objects._s3, "PutObject")
    assert store.compact("staff").rows_out == 1
    assert len(puts) == 3  # the other's; ours refused; ours again, after reading again


# -- incremental compaction ------------------------------------------------------------


def served(store: GalleryStore, gallery: str = "staff") -> pa.Table:
    """The gallery as a reader serves it: its base with its delta on top."""
    base = store.objects.get(store.gallery_key(gallery))
    try:
        delta = store.objects.get(f"galleries/{gallery}/delta.parquet")
    except ObjectNotFoundError:
        delta = None
    return served_view(base.body, delta.body if delta else None).table


def _rows_and_vectors(store: GalleryStore) -> tuple[list[tuple[str, str, int]], np.ndarray]:
    """The served rows in key order (a delta's new rows follow the base's) and their
    vectors."""
    table = served(store)
    keys = keys_of(table)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    vectors = np.asarray(table["embedding"].to_pylist(), dtype=np.float32).reshape(len(keys), -1)
    return [keys[i] for i in order], vectors[order]


def test_an_incremental_run_reads_only_new_parts_and_equals_a_full_rebuild(store, rng):
    """Three rounds of uploads (a retry of an older photo among them, a subject erased in
    between): each incremental run reads only its round's parts and writes exactly the
    gallery a full rebuild of every part writes."""
    tombstones = erasures_in("gallery:staff", {"bob": T2})
    rounds = [
        {"p1": [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)], "p2": [("carol", "c/1.jpg", 0)]},
        {"p3": [("dave", "d/1.jpg", 0), ("alice", "a/1.jpg", 0)]},  # a/1.jpg re-embedded
        {"p4": [("erin", "e/1.jpg", 0)], "p5": [("bob", "b/2.jpg", 0)]},  # bob again, later
    ]
    created = [T1, T2, T3]
    for i, (new, when) in enumerate(zip(rounds, created, strict=True)):
        for name, rows in new.items():
            uploaded = "2024-03-04T10:00:00Z" if name == "p5" else when
            store.write_table(
                store.part_key("staff", name), part(rng, rows, when, uploaded_at=uploaded)
            )
        report = store.compact("staff", erasures=tombstones)
        assert report.mode == ("full" if i == 0 else "incremental")
        assert report.parts_read == len(new)
        incremental = _rows_and_vectors(store)
        assert store.compact("staff", erasures=tombstones, full=True).parts_read == sum(
            len(r) for r in rounds[: i + 1]
        )
        full = _rows_and_vectors(store)
        assert incremental[0] == full[0]
        np.testing.assert_array_equal(incremental[1], full[1])
    assert [k[0] for k in full[0]] == ["alice", "bob", "carol", "dave", "erin"]
    assert ("bob", "b/1.jpg", 0) not in full[0]  # erased; b/2.jpg came after the erasure


def test_nothing_new_writes_nothing_and_what_no_marker_announces_waits_for_a_full_run(
    s3, store, rng
):
    for name, who in [("p1", "alice"), ("p2", "bob")]:
        store.write_table(store.part_key("staff", name), part(rng, [(who, f"{who}/1.jpg", 0)], T1))
    store.compact("staff")
    etag = store.objects.head(store.gallery_key("staff")).etag
    puts = count_calls(s3, "PutObject")
    again = store.compact("staff")
    assert (again.mode, again.parts_read, again.rows_out) == ("incremental", 0, 2)
    assert puts == []  # nothing written at all
    store.write_table(store.part_key("staff", "p3"), part(rng, [("carol", "carol/1.jpg", 0)], T2))
    new = store.compact("staff")
    assert (new.mode, new.parts_read, new.rows_out) == ("incremental", 1, 3)
    assert store.objects.head(store.gallery_key("staff")).etag == etag  # the base untouched
    shown = summarise(store, "staff")
    assert (shown["rows"], shown["subjects"], shown["compacted"]) == (3, 3, True)
    # p2 rewritten in place with another row: its marker makes the next run merge it; the
    # row it no longer holds stays served until a full run, which reads every part.
    store.write_table(store.part_key("staff", "p2"), part(rng, [("bob", "bob/1.jpg", 1)], T2))
    rewritten = store.compact("staff")
    assert (rewritten.mode, rewritten.parts_read, rewritten.rows_out) == ("incremental", 1, 4)
    assert ("bob", "bob/1.jpg", 1) in _rows_and_vectors(store)[0]
    assert summarise(store, "staff")["rows"] == 4
    # A part deleted by hand announces nothing either.
    s3.delete_object(Bucket=BUCKET, Key=store.part_key("staff", "p1"))
    assert store.compact("staff").rows_out == 4
    full = store.compact("staff", full=True)
    assert (full.mode, full.parts_read, full.rows_out) == ("full", 2, 2)
    assert _rows_and_vectors(store)[0] == [("bob", "bob/1.jpg", 1), ("carol", "carol/1.jpg", 0)]


def test_a_day_after_the_last_full_run_the_next_run_is_full(store, rng):
    store.write_table(store.part_key("staff", "p1"), part(rng, [("alice", "a/1.jpg", 0)], T1))
    store.compact("staff")
    key = "galleries/staff/compaction.json"
    state = store.objects.get_json(key, "state")
    assert store.compact("staff").mode == "incremental"
    store.objects.put_json(key, {**state, "full_at": "2024-01-01T00:00:00Z"})
    assert store.compact("staff").mode == "full"
    assert store.compact("staff").mode == "incremental"


def test_a_grown_delta_is_folded_into_a_new_base_and_readers_never_count_it_twice(
    store, rng, monkeypatch
):
    monkeypatch.setattr(compactor, "FOLD_MIN_ROWS", 2)
    store.write_table(
        store.part_key("staff", "p1"),
        part(rng, [(s, f"{s}/1.jpg", 0) for s in ("alice", "bob", "carol", "dave")], T1),
    )
    store.compact("staff")
    base = store.objects.get(store.gallery_key("staff")).body
    store.write_table(store.part_key("staff", "p2"), part(rng, [("erin", "e/1.jpg", 0)], T2))
    assert store.compact("staff").mode == "incremental"  # 1 row <= max(25% of 4, 2)
    assert store.objects.get(store.gallery_key("staff")).body == base
    store.write_table(
        store.part_key("staff", "p3"),
        part(rng, [("frank", "f/1.jpg", 0), ("alice", "alice/1.jpg", 0)], T3),
    )
    folded = store.compact("staff")
    assert (folded.mode, folded.parts_read, folded.rows_out, folded.duplicates_dropped) == (
        "fold",
        1,
        6,
        1,
    )
    delta = pq.read_table(pa.BufferReader(store.objects.get("galleries/staff/delta.parquet").body))
    assert delta.num_rows == 0  # what it held is in the new base
    served_rows = _rows_and_vectors(store)[0]
    assert [k[0] for k in served_rows] == ["alice", "bob", "carol", "dave", "erin", "frank"]
    again = store.compact("staff", full=True)
    assert again.rows_out == 6 and _rows_and_vectors(store)[0] == served_rows


def test_a_delta_written_for_an_older_base_is_not_served(store, rng):
    """A fold writes its base, then empties the delta: a reader in between sees the new
    base and the old delta, whose rows the base holds, and serves the base alone."""
    store.write_table(store.part_key("staff", "p1"), part(rng, [("alice", "a/1.jpg", 0)], T1))
    store.compact("staff")
    store.write_table(store.part_key("staff", "p2"), part(rng, [("bob", "b/1.jpg", 0)], T2))
    store.compact("staff")
    old_delta = store.objects.get("galleries/staff/delta.parquet").body
    assert len(served(store)) == 2
    store.compact("staff", full=True)
    store.objects.put("galleries/staff/delta.parquet", old_delta, content_type="x/parquet")
    assert sorted(keys_of(served(store))) == [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)]
    assert len(served(store)) == 2


def test_an_incremental_run_committing_during_a_full_one_loses_nothing(store, rng):
    """A full run listed the parts; before it writes its base another worker merges a new
    part into the delta (and clears that part's marker). The full run's base lacks the part,
    so the delta, written for the old base, is relabelled onto the new one, not emptied."""
    store.write_table(store.part_key("staff", "p1"), part(rng, [("alice", "a/1.jpg", 0)], T1))
    store.compact("staff")
    other = GalleryStore(store.objects._s3, BUCKET)

    def meanwhile() -> None:
        other.write_table(other.part_key("staff", "p2"), part(rng, [("bob", "b/1.jpg", 0)], T2))
        assert other.compact("staff").mode == "incremental"

    run_first(store, "write_table", meanwhile)
    assert store.compact("staff", full=True).parts_read == 1  # listed before bob's part
    assert sorted(keys_of(served(store))) == [("alice", "a/1.jpg", 0), ("bob", "b/1.jpg", 0)]
    assert store.compact("staff").rows_out == 2


def test_a_run_committing_during_a_fold_loses_nothing(store, rng, monkeypatch):
    """The fold read base, delta and parts, then another worker compacted (a new part
    among what it merged) before the fold wrote: the fold's write is refused or finds the
    other generation changed, starts again, and the gallery ends up with every row."""
    monkeypatch.setattr(compactor, "FOLD_MIN_ROWS", 1)
    rows = [(s, f"{s}/1.jpg", 0) for s in ("alice", "bob", "carol", "dave")]
    store.write_table(store.part_key("staff", "p1"), part(rng, rows, T1))
    store.compact("staff")
    other = GalleryStore(store.objects._s3, BUCKET)

    def meanwhile() -> None:
        other.write_table(other.part_key("staff", "p3"), part(rng, [("frank", "f/1.jpg", 0)], T3))
        other.compact("staff")

    store.write_table(
        store.part_key("staff", "p2"),
        part(rng, [("erin", "e/1.jpg", 0), ("eve", "v/1.jpg", 0)], T2),
    )
    run_first(store, "write_table", meanwhile)
    store.compact("staff")
    assert [k[0] for k in sorted(keys_of(served(store)))] == [
        "alice",
        "bob",
        "carol",
        "dave",
        "erin",
        "eve",
        "frank",
    ]
    assert store.compact("staff").parts_read == 0  # every marker cleared


def test_a_part_written_again_while_a_run_merges_it_keeps_its_marker(store, rng):
    """The run listed p2's marker and merged p2; before it deletes the marker, p2 is written
    again (a new marker, another ETag). Its conditional delete leaves the new marker, so
    the next run merges p2's new rows."""
    store.write_table(store.part_key("staff", "p1"), part(rng, [("alice", "a/1.jpg", 0)], T1))
    store.compact("staff")
    store.write_table(store.part_key("staff", "p2"), part(rng, [("bob", "b/1.jpg", 0)], T2))
    again = part(rng, [("bob", "b/1.jpg", 0)], T3)
    run_first(
        store.objects,
        "delete_if_match",
        lambda: store.write_table(store.part_key("staff", "p2"), again),
    )
    assert store.compact("staff").parts_read == 1
    assert store.objects.list_keys("galleries/staff/inbox/") == ["galleries/staff/inbox/p2"]
    assert store.compact("staff").parts_read == 1  # the new p2, merged
    np.testing.assert_array_equal(
        row_embedding(served(store), "b/1.jpg"), row_embedding(again, "b/1.jpg")
    )
    assert store.compact("staff").parts_read == 0
