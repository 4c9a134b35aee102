"""Erasing one person from S3 objects, every version: storage.scrub and batch.scrub_uploads.

On moto's S3 with versioning enabled (the template's bucket). Every check reads the bucket
back with a raw ``list_object_versions``/``get_object``: which versions and delete markers
are left, and what they hold. Photos are the project's test photos; gallery parts are real
gallery tables written through :class:`GalleryStore`.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests_support import unit_rows

from facegate.batch.archives import read_archive
from facegate.batch.scrub_uploads import (
    rewrite_archive,
    rewrite_manifest_csv,
    scrub_archive,
    scrub_manifest,
)
from facegate.errors import ValidationError
from facegate.gallery.format import (
    METADATA_KEY,
    GalleryMeta,
    build_gallery_table,
    build_rejects_table,
    gallery_meta_from_schema,
)
from facegate.storage.galleries import GalleryStore
from facegate.storage.objects import ObjectStore
from facegate.storage.scrub import (
    ERASURE_METADATA,
    Scrubbed,
    erase_prefix,
    is_rewritten_by_erasure,
    rewrite_table,
    rewrite_versions,
)

ZIP_TYPE = "application/zip"
CSV_TYPE = "text/csv"


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def history(objects: ObjectStore, key: str) -> list[dict[str, Any]]:
    """Every version and delete marker of exactly ``key``, as S3 lists them (a raw listing,
    not the store's own :meth:`ObjectStore.versions`)."""
    answer = objects._s3.list_object_versions(Bucket=objects.bucket, Prefix=key)
    found = [
        {"id": v["VersionId"], "latest": v["IsLatest"], "etag": v["ETag"], "marker": False}
        for v in answer.get("Versions", [])
        if v["Key"] == key
    ]
    found += [
        {"id": m["VersionId"], "latest": m["IsLatest"], "etag": None, "marker": True}
        for m in answer.get("DeleteMarkers", [])
        if m["Key"] == key
    ]
    return sorted(found, key=lambda v: v["id"])


def body_of(objects: ObjectStore, key: str, version_id: str | None = None) -> bytes:
    return objects.get(key, version_id=version_id).body


def put(objects: ObjectStore, key: str, body: bytes, content_type: str = CSV_TYPE) -> str:
    """An upload (no erasure metadata); its version id."""
    version = objects.put(key, body, content_type=content_type).version_id
    assert version is not None
    return version


def drop_line(name: str) -> Any:
    """A scrub of newline-separated names: the body without ``name``'s lines."""

    def scrub(body: bytes) -> tuple[bytes | None, int]:
        lines = body.decode().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() != name]
        removed = len(lines) - len(kept)
        return ("".join(kept).encode() if removed else None), removed

    return scrub


def make_zip(entries: list[tuple[str, bytes, int]], comment: bytes = b"") -> bytes:
    """A zip of ``(name, bytes, compression)`` entries, in that order."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as archive:
        archive.comment = comment
        for name, data, compression in entries:
            info = zipfile.ZipInfo(name, (2024, 5, 17, 10, 30, 0))
            info.compress_type = compression
            info.external_attr = 0o640 << 16
            archive.writestr(info, data)
    return sink.getvalue()


def zip_entries(data: bytes) -> dict[str, tuple[bytes, int, tuple[int, ...]]]:
    """Each entry's bytes, compression and time."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {
            i.filename: (archive.read(i), i.compress_type, i.date_time) for i in archive.infolist()
        }


@pytest.fixture
def photos(faces_dir: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(faces_dir.glob("*.jpg"))}


# --------------------------------------------------------------------------------------
# erase_prefix
# --------------------------------------------------------------------------------------


def test_erase_prefix_destroys_every_version_and_marker_under_the_prefix(versioned, photos):
    mine = "uploads/team/alice/"
    put(versioned, mine + "a1.jpg", photos["person_a_1"], "image/jpeg")
    put(versioned, mine + "a1.jpg", photos["person_a_2"], "image/jpeg")
    put(versioned, mine + "a2.jpg", photos["person_a_2"], "image/jpeg")
    versioned.delete(mine + "a2.jpg")  # a delete marker over the photo
    neighbour = put(versioned, "uploads/team/alicia/x.jpg", photos["person_b_1"], "image/jpeg")

    done = erase_prefix(versioned, mine, "photos")

    assert done == Scrubbed(
        key=mine, kind="photos", versions_deleted=4, rows_removed=2, rewritten=False
    )
    assert versioned.versions(mine) == []
    assert [v["id"] for v in history(versioned, "uploads/team/alicia/x.jpg")] == [neighbour]


def test_erase_prefix_with_nothing_there_is_none(versioned, photos):
    put(versioned, "uploads/team/alicia/x.jpg", photos["person_b_1"], "image/jpeg")
    assert erase_prefix(versioned, "uploads/team/alice/", "photos") is None
    assert len(versioned.versions("uploads/")) == 1


@pytest.mark.parametrize("prefix", ["uploads/", "uploads/team/alice", "uploads//alice/", ""])
def test_erase_prefix_refuses_a_prefix_that_could_reach_too_far(versioned, prefix):
    put(versioned, "uploads/team/alice/a.jpg", b"photo")
    with pytest.raises(ValidationError):
        erase_prefix(versioned, prefix, "photos")
    assert len(versioned.versions("uploads/")) == 1


# --------------------------------------------------------------------------------------
# rewrite_versions
# --------------------------------------------------------------------------------------


def test_every_version_holding_the_person_is_destroyed_and_one_clean_version_written(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"alice\nbob\n")
    versioned.delete(key)
    put(versioned, key, b"bob\nalice\ncarol\n")

    done = rewrite_versions(versioned, key, "manifest", drop_line("alice"))

    assert done == Scrubbed(
        key=key, kind="manifest", versions_deleted=3, rows_removed=1, rewritten=True
    )
    left = history(versioned, key)
    assert len(left) == 1 and left[0]["latest"] and not left[0]["marker"]
    assert body_of(versioned, key) == b"bob\ncarol\n"


def test_the_rewrite_is_marked_encrypted_and_keeps_its_content_type(versioned, fresh_aws):
    key = "uploads/team/names.csv"
    upload = put(versioned, key, b"alice\nbob\n", "text/csv; charset=utf-8")
    assert not is_rewritten_by_erasure(versioned.head(key))

    rewrite_versions(versioned, key, "manifest", drop_line("alice"))

    head = fresh_aws.s3.head_object(Bucket=fresh_aws.bucket, Key=key)
    assert head["Metadata"] == dict(ERASURE_METADATA)
    assert head["ContentType"] == "text/csv; charset=utf-8"
    assert head["ServerSideEncryption"] == "AES256"
    assert head["VersionId"] != upload
    assert is_rewritten_by_erasure(versioned.head(key))


def test_nothing_is_touched_when_no_version_holds_the_person(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"bob\n")
    versioned.delete(key)
    put(versioned, key, b"carol\n")
    before = history(versioned, key)
    calls: list[bytes] = []

    def scrub(body: bytes) -> tuple[bytes | None, int]:
        calls.append(body)
        return drop_line("alice")(body)

    assert rewrite_versions(versioned, key, "manifest", scrub) is None
    assert history(versioned, key) == before
    assert sorted(calls) == [b"bob\n", b"carol\n"]  # every readable version was looked at


def test_a_clean_live_version_is_kept_and_older_ones_holding_the_person_destroyed(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"alice\nbob\n")
    live = put(versioned, key, b"bob\n")

    done = rewrite_versions(versioned, key, "manifest", drop_line("alice"))

    assert done == Scrubbed(
        key=key, kind="manifest", versions_deleted=1, rows_removed=0, rewritten=False
    )
    assert [v["id"] for v in history(versioned, key)] == [live]
    assert not is_rewritten_by_erasure(versioned.head(key))


def test_a_key_hidden_by_a_delete_marker_loses_the_marker_and_every_version(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"alice\n")
    put(versioned, key, b"alice\nbob\n")
    versioned.delete(key)

    done = rewrite_versions(versioned, key, "manifest", drop_line("alice"))

    assert done == Scrubbed(
        key=key, kind="manifest", versions_deleted=3, rows_removed=0, rewritten=False
    )
    assert history(versioned, key) == []


def test_an_empty_scrub_means_the_key_goes_whole(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"alice\nbob\n")
    put(versioned, key, b"alice\n")

    def scrub(body: bytes) -> tuple[bytes | None, int]:
        new, removed = drop_line("alice")(body)
        return (b"" if new is not None and not new.strip() else new), removed

    done = rewrite_versions(versioned, key, "manifest", scrub)

    assert done == Scrubbed(
        key=key, kind="manifest", versions_deleted=2, rows_removed=1, rewritten=False
    )
    assert history(versioned, key) == []


def test_only_exactly_the_key_is_rewritten_not_keys_it_is_a_prefix_of(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"alice\n\nbob\n")
    longer = put(versioned, key + ".bak", b"alice\n")

    done = rewrite_versions(versioned, key, "manifest", drop_line("alice"))

    assert done is not None and done.versions_deleted == 1
    assert [v["id"] for v in history(versioned, key + ".bak")] == [longer]
    assert body_of(versioned, key + ".bak") == b"alice\n"


def test_a_version_uploaded_after_the_listing_is_neither_destroyed_nor_overwritten(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"alice\n")
    put(versioned, key, b"alice\nbob\n")
    raced: list[str] = []

    def racing(body: bytes) -> tuple[bytes | None, int]:
        if not raced:  # someone uploads while the erasure reads
            raced.append(put(versioned, key, b"dave\nalice\n"))
        return drop_line("alice")(body)

    done = rewrite_versions(versioned, key, "manifest", racing)

    assert done == Scrubbed(
        key=key,
        kind="manifest",
        versions_deleted=2,
        rows_removed=1,
        rewritten=False,
        versions_unread=1,
    )
    left = history(versioned, key)
    assert [(v["id"], v["latest"]) for v in left] == [(raced[0], True)]
    assert body_of(versioned, key) == b"dave\nalice\n"  # still to scrub: run it again
    again = rewrite_versions(versioned, key, "manifest", drop_line("alice"))
    assert again is not None and again.rewritten and again.versions_unread == 0
    assert body_of(versioned, key) == b"dave\n"
    assert len(history(versioned, key)) == 1


class UploadAfterFirstListing(ObjectStore):
    """The store, with someone's upload landing right after the erasure's first listing."""

    def __init__(self, store: ObjectStore, key: str, body: bytes) -> None:
        super().__init__(store._s3, store.bucket)
        self.pending: list[tuple[str, bytes]] = [(key, body)]

    def versions(self, prefix: str) -> list[tuple[str, str]]:
        listed = super().versions(prefix)
        while self.pending:
            put(self, *self.pending.pop())
        return listed


def test_an_upload_between_listing_and_reading_is_listed_again_and_scrubbed(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"alice\nbob\n")
    racing = UploadAfterFirstListing(versioned, key, b"alice\nfrank\n")

    done = rewrite_versions(racing, key, "manifest", drop_line("alice"))

    assert done is not None and (done.versions_deleted, done.versions_unread) == (2, 0)
    assert body_of(versioned, key) == b"frank\n"
    assert len(history(versioned, key)) == 1


def test_a_version_written_during_the_rewrite_is_kept_and_counted(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"alice\nbob\n")
    raced: list[str] = []

    def write(body: bytes):  # type: ignore[no-untyped-def]
        raced.append(put(versioned, key, b"erin\n"))
        return versioned.put(key, body, content_type=CSV_TYPE, metadata=ERASURE_METADATA)

    done = rewrite_versions(versioned, key, "manifest", drop_line("alice"), write)

    assert done is not None and done.rewritten
    assert (done.versions_deleted, done.versions_unread) == (1, 1)
    left = {v["id"]: v["latest"] for v in history(versioned, key)}
    assert raced[0] in left and not left[raced[0]]
    assert body_of(versioned, key) == b"bob\n"
    assert body_of(versioned, key, raced[0]) == b"erin\n"


def test_the_written_version_is_never_destroyed_even_without_its_put_answer(versioned):
    key = "uploads/team/names.csv"
    put(versioned, key, b"alice\nbob\n")

    def write(body: bytes) -> None:
        versioned.put(key, body, content_type=CSV_TYPE)

    done = rewrite_versions(versioned, key, "manifest", drop_line("alice"), write)

    assert done is not None and (done.rewritten, done.versions_deleted) == (True, 1)
    assert body_of(versioned, key) == b"bob\n"
    assert len(history(versioned, key)) == 1


def test_in_an_unversioned_bucket_the_rewrite_replaces_the_object(store):
    key = "uploads/team/names.csv"
    store.put(key, b"alice\nbob\n", content_type=CSV_TYPE)

    done = rewrite_versions(store, key, "manifest", drop_line("alice"))

    assert done is not None and (done.rewritten, done.versions_deleted) == (True, 0)
    assert body_of(store, key) == b"bob\n"


def test_scrubbed_to_dict_is_plain_values():
    done = Scrubbed(key="k", kind="archive", versions_deleted=2, rows_removed=3, rewritten=True)
    assert done.to_dict() == {
        "key": "k",
        "kind": "archive",
        "versions_deleted": 2,
        "rows_removed": 3,
        "rewritten": True,
        "versions_unread": 0,
    }


# --------------------------------------------------------------------------------------
# rewrite_table: gallery parts and rejects
# --------------------------------------------------------------------------------------

DIM = 8
SHA = "ab" * 32


def gallery_part(subjects: list[str], seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(subjects)
    meta = GalleryMeta(model_id="sface", weights_sha256=SHA, dim=DIM, threshold=0.36)
    return build_gallery_table(
        subject_ids=subjects,
        image_keys=[f"uploads/team/{s}/{i}.jpg" for i, s in enumerate(subjects)],
        face_indices=np.zeros(n, dtype=np.int32),
        bboxes=rng.uniform(0, 100, (n, 4)).astype(np.float32),
        det_scores=rng.uniform(0.9, 1.0, n).astype(np.float32),
        embeddings=unit_rows(rng, n, DIM),
        meta=meta,
    )


def is_subject(subject: str):  # type: ignore[no-untyped-def]
    return lambda table: pc.equal(table["subject_id"], subject)


def test_a_gallery_part_loses_the_persons_rows_in_every_version(versioned, fresh_aws):
    galleries = GalleryStore(fresh_aws.s3, fresh_aws.bucket)
    key = "galleries/team/parts/part-1.parquet"
    galleries.write_table(key, gallery_part(["alice", "bob"], seed=1))
    live = gallery_part(["bob", "alice", "carol", "alice"], seed=2)
    galleries.write_table(key, live)

    done = rewrite_table(
        versioned, key, "table", is_subject("alice"), lambda t: galleries.write_table(key, t)
    )

    assert done == Scrubbed(
        key=key, kind="table", versions_deleted=2, rows_removed=2, rewritten=True
    )
    assert len(history(versioned, key)) == 1
    table = galleries.read_table(key)
    assert table.column("subject_id").to_pylist() == ["bob", "carol"]
    expected = live.filter(pc.invert(pc.equal(live["subject_id"], "alice")))
    assert table.equals(expected)  # the other rows, every column, as they were
    meta, was = gallery_meta_from_schema(table.schema), gallery_meta_from_schema(live.schema)
    assert meta.row_count == 2
    assert (meta.model_id, meta.created_at, meta.threshold) == (
        was.model_id,
        was.created_at,
        was.threshold,
    )


def test_a_part_of_only_the_person_is_written_empty_not_removed(versioned, fresh_aws):
    galleries = GalleryStore(fresh_aws.s3, fresh_aws.bucket)
    key = "galleries/team/parts/part-2.parquet"
    galleries.write_table(key, gallery_part(["alice", "alice"], seed=3))

    done = rewrite_table(
        versioned, key, "table", is_subject("alice"), lambda t: galleries.write_table(key, t)
    )

    assert done is not None and (done.rows_removed, done.rewritten) == (2, True)
    table = galleries.read_table(key)
    assert table.num_rows == 0
    assert METADATA_KEY in (table.schema.metadata or {})
    assert gallery_meta_from_schema(table.schema).row_count == 0


def test_a_rejects_table_loses_the_persons_rows(versioned, fresh_aws):
    galleries = GalleryStore(fresh_aws.s3, fresh_aws.bucket)
    key = "galleries/team/rejects/part-1.parquet"
    rejects = build_rejects_table(
        ["uploads/team/alice/a.jpg", "uploads/team/bob/b.jpg", "uploads/team/x.zip/alice/c.jpg"],
        ["no_face", "invalid_image", "no_face"],
        [None, "not a JPEG", None],
    )
    galleries.write_table(key, rejects)

    def alices(table: pa.Table):  # type: ignore[no-untyped-def]
        return pc.match_substring(table["image_key"], "/alice/")

    done = rewrite_table(versioned, key, "rejects", alices, lambda t: galleries.write_table(key, t))

    assert done is not None and done.rows_removed == 2
    left = galleries.read_table(key).select(["image_key", "reason", "detail"]).to_pylist()
    assert left == [
        {"image_key": "uploads/team/bob/b.jpg", "reason": "invalid_image", "detail": "not a JPEG"}
    ]
    assert len(history(versioned, key)) == 1


def test_a_table_without_the_person_is_left_alone(versioned, fresh_aws):
    galleries = GalleryStore(fresh_aws.s3, fresh_aws.bucket)
    key = "galleries/team/parts/part-3.parquet"
    galleries.write_table(key, gallery_part(["bob", "carol"], seed=4))
    before = history(versioned, key)
    written: list[pa.Table] = []

    assert rewrite_table(versioned, key, "table", is_subject("alice"), written.append) is None
    assert written == [] and history(versioned, key) == before


def test_a_mask_of_the_wrong_length_is_refused_before_anything_is_written(versioned, fresh_aws):
    galleries = GalleryStore(fresh_aws.s3, fresh_aws.bucket)
    key = "galleries/team/parts/part-4.parquet"
    galleries.write_table(key, gallery_part(["alice", "bob"], seed=5))
    before = history(versioned, key)

    with pytest.raises(ValidationError):
        rewrite_table(versioned, key, "table", lambda t: pa.array([True]), print)
    assert history(versioned, key) == before


# --------------------------------------------------------------------------------------
# Photo sets: folders layout
# --------------------------------------------------------------------------------------


def test_an_archive_loses_the_persons_photos_in_every_version(versioned, photos):
    key = "uploads/team/set.zip"
    put(
        versioned,
        key,
        make_zip([("alice/a1.jpg", photos["person_a_1"], zipfile.ZIP_DEFLATED)]),
        ZIP_TYPE,
    )
    live = make_zip(
        [
            ("alice/", b"", zipfile.ZIP_STORED),
            ("alice/a1.jpg", photos["person_a_1"], zipfile.ZIP_DEFLATED),
            ("bob/b1.jpg", photos["person_b_1"], zipfile.ZIP_STORED),
            ("alice/a2.jpg", photos["person_a_2"], zipfile.ZIP_STORED),
            ("bob/b2.jpg", photos["person_b_2"], zipfile.ZIP_DEFLATED),
            ("__MACOSX/alice/._a1.jpg", b"resource fork", zipfile.ZIP_DEFLATED),
            ("__MACOSX/bob/._b1.jpg", b"resource fork", zipfile.ZIP_DEFLATED),
        ],
        comment=b"team photos",
    )
    put(versioned, key, live, ZIP_TYPE)

    done = rewrite_archive(versioned, key, "alice", None)

    assert done == Scrubbed(
        key=key, kind="archive", versions_deleted=2, rows_removed=2, rewritten=True
    )
    left = history(versioned, key)
    assert len(left) == 1 and left[0]["latest"]
    rewritten = body_of(versioned, key)
    before, after = zip_entries(live), zip_entries(rewritten)
    assert sorted(after) == ["__MACOSX/bob/._b1.jpg", "alice/", "bob/b1.jpg", "bob/b2.jpg"]
    for name in after:
        assert after[name] == before[name]  # bytes, compression and time as they were
    assert zipfile.ZipFile(io.BytesIO(rewritten)).comment == b"team photos"
    assert read_archive(rewritten).members == [("bob/b1.jpg", "bob"), ("bob/b2.jpg", "bob")]
    head = versioned.head(key)
    assert head.content_type == ZIP_TYPE and is_rewritten_by_erasure(head)


def test_the_persons_refused_photos_go_too(photos):
    data = make_zip(
        [
            ("set/alice/a1.jpg", photos["person_a_1"], zipfile.ZIP_DEFLATED),
            ("set/alice/old/a0.jpg", photos["person_a_2"], zipfile.ZIP_DEFLATED),
            ("set/bob/b1.jpg", photos["person_b_1"], zipfile.ZIP_DEFLATED),
            ("set/bob/old/b0.jpg", photos["person_b_2"], zipfile.ZIP_DEFLATED),
        ]
    )
    rejected = [path for path, _ in read_archive(data).rejects]
    assert "set/alice/old/a0.jpg" in rejected  # nested too deep: never ingested

    new, removed = scrub_archive(data, "alice")

    assert new is not None and removed == 2
    assert sorted(zip_entries(new)) == ["set/bob/b1.jpg", "set/bob/old/b0.jpg"]


def test_an_archive_of_only_the_persons_photos_is_destroyed_whole(versioned, photos):
    key = "uploads/team/alice.zip"
    only = make_zip(
        [
            ("alice/a1.jpg", photos["person_a_1"], zipfile.ZIP_DEFLATED),
            ("alice/a2.jpg", photos["person_a_2"], zipfile.ZIP_DEFLATED),
            (".DS_Store", b"finder", zipfile.ZIP_STORED),
        ]
    )
    put(versioned, key, only, ZIP_TYPE)
    put(versioned, key, only, ZIP_TYPE)
    versioned.delete(key)
    put(versioned, key, only, ZIP_TYPE)

    done = rewrite_archive(versioned, key, "alice", None)

    assert done == Scrubbed(
        key=key, kind="archive", versions_deleted=4, rows_removed=2, rewritten=False
    )
    assert history(versioned, key) == []


def test_an_archive_without_the_person_is_left_alone(versioned, photos):
    key = "uploads/team/set.zip"
    put(versioned, key, make_zip([("bob/b1.jpg", photos["person_b_1"], 8)]), ZIP_TYPE)
    before = history(versioned, key)

    assert rewrite_archive(versioned, key, "alice", None) is None
    assert history(versioned, key) == before


# --------------------------------------------------------------------------------------
# Photo sets: manifest layout
# --------------------------------------------------------------------------------------


def test_a_manifest_layout_set_and_its_sibling_manifest_lose_the_person(versioned, photos):
    archive_key, manifest_key = "uploads/team/flat.zip", "uploads/team/flat.csv"
    manifest = b'path,subject_id,note\r\np1.jpg,alice,\r\np2.jpg,bob,"two\r\nlines"\r\n'
    manifest += b"p3.jpg,alice,\r\np4.jpg,carol,x\r\n"
    put(versioned, manifest_key, manifest)
    archive = make_zip(
        [
            ("p1.jpg", photos["person_a_1"], zipfile.ZIP_DEFLATED),
            ("p2.jpg", photos["person_b_1"], zipfile.ZIP_DEFLATED),
            ("p3.jpg", photos["person_a_2"], zipfile.ZIP_STORED),
            ("p4.jpg", photos["impostor_1"], zipfile.ZIP_DEFLATED),
        ]
    )
    put(versioned, archive_key, archive, ZIP_TYPE)

    # The archive first: its plan needs the manifest's rows naming the person.
    done = rewrite_archive(versioned, archive_key, "alice", body_of(versioned, manifest_key))
    rows = rewrite_manifest_csv(versioned, manifest_key, "alice")

    assert done is not None and (done.rows_removed, done.rewritten) == (2, True)
    assert rows == Scrubbed(
        key=manifest_key, kind="manifest", versions_deleted=1, rows_removed=2, rewritten=True
    )
    new_manifest = body_of(versioned, manifest_key)
    assert (
        new_manifest == b'path,subject_id,note\r\np2.jpg,bob,"two\r\nlines"\r\np4.jpg,carol,x\r\n'
    )
    new_archive = body_of(versioned, archive_key)
    assert sorted(zip_entries(new_archive)) == ["p2.jpg", "p4.jpg"]
    assert read_archive(new_archive, new_manifest).members == [
        ("p2.jpg", "bob"),
        ("p4.jpg", "carol"),
    ]
    assert len(history(versioned, archive_key)) == len(history(versioned, manifest_key)) == 1


def test_an_inner_manifest_loses_the_persons_rows_with_their_photos(versioned, photos):
    key = "uploads/team/inner.zip"
    inner = b"\xef\xbb\xbfsubject_id,path\nalice,set/p1.jpg\n\nbob,p2.jpg\nalice,gone.jpg\n"
    archive = make_zip(
        [
            ("set/manifest.csv", inner, zipfile.ZIP_DEFLATED),
            ("set/p1.jpg", photos["person_a_1"], zipfile.ZIP_DEFLATED),
            ("set/p2.jpg", photos["person_b_1"], zipfile.ZIP_DEFLATED),
        ]
    )
    put(versioned, key, archive, ZIP_TYPE)

    done = rewrite_archive(versioned, key, "alice", None)

    assert done is not None and (done.rows_removed, done.rewritten) == (1, True)
    entries = zip_entries(body_of(versioned, key))
    assert sorted(entries) == ["set/manifest.csv", "set/p2.jpg"]
    assert entries["set/manifest.csv"][0] == b"\xef\xbb\xbfsubject_id,path\n\nbob,p2.jpg\n"
    assert entries["set/manifest.csv"][1] == zipfile.ZIP_DEFLATED
    assert read_archive(body_of(versioned, key)).members == [("set/p2.jpg", "bob")]


def test_an_inner_manifest_naming_the_person_alone_is_scrubbed_too(photos):
    """The sibling manifest wins for the plan, but the inner one still names the person."""
    inner = b"path,subject_id\np1.jpg,alice\np2.jpg,bob\n"
    data = make_zip(
        [
            ("manifest.csv", inner, zipfile.ZIP_DEFLATED),
            ("p1.jpg", photos["person_b_2"], zipfile.ZIP_DEFLATED),
            ("p2.jpg", photos["person_b_1"], zipfile.ZIP_DEFLATED),
        ]
    )
    sibling = b"path,subject_id\np1.jpg,bob\np2.jpg,bob\n"

    new, removed = scrub_archive(data, "alice", sibling)

    assert new is not None and removed == 0
    entries = zip_entries(new)
    assert entries["manifest.csv"][0] == b"path,subject_id\np2.jpg,bob\n"
    assert entries["p1.jpg"] == zip_entries(data)["p1.jpg"]


# --------------------------------------------------------------------------------------
# scrub_manifest
# --------------------------------------------------------------------------------------


def test_scrub_manifest_keeps_every_other_line_as_written():
    text = '\n\nPath , Subject_ID\n"a,1.jpg", alice \n"b.jpg",bob\nshort\n"c.jpg","alice"\n'
    new, removed = scrub_manifest(text.encode(), "alice")
    assert removed == 2
    assert new == b'\n\nPath , Subject_ID\n"b.jpg",bob\nshort\n'
    assert list(csv.reader(io.StringIO(new.decode()))) == [
        [],
        [],
        ["Path ", " Subject_ID"],
        ["b.jpg", "bob"],
        ["short"],
    ]


def test_scrub_manifest_without_the_person_is_none():
    assert scrub_manifest(b"path,subject_id\np.jpg,bob\n", "alice") == (None, 0)


def test_scrub_manifest_refuses_what_ingestion_refuses():
    with pytest.raises(ValidationError):
        scrub_manifest(b"file,who\np.jpg,alice\n", "alice")
    with pytest.raises(ValidationError):
        scrub_manifest("path,subject_id\n".encode("utf-16"), "alice")
