"""The data-subject export (:class:`SubjectExport`) on moto with the fake processor: every
store that holds a trace of a subject is found, with nothing of the subject's photos or
(unless asked) embeddings in the answer, and only a subject found nowhere is unknown."""

from __future__ import annotations

import numpy as np
import pytest
from service_fakes import ANN_1, ANN_2, BOB, DIM, unit

from facegate.errors import UnknownSubjectError
from facegate.gallery.format import GalleryMeta, build_gallery_table
from facegate.service import FaceService
from facegate.service.export import SubjectExport, names_subject
from facegate.storage.galleries import GalleryStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Tombstones


@pytest.fixture
def stores(fresh_aws):
    settings = fresh_aws.settings
    return (
        SubjectStore.from_settings(settings),
        PhotoStore.from_settings(settings),
        GalleryStore.from_settings(settings),
        Tombstones.from_settings(settings),
    )


@pytest.mark.parametrize(
    "key,expected",
    [
        ("uploads/g/ann/1.jpg", True),
        ("uploads/g/set.zip/ann/1.jpg", True),
        ("uploads/g/set.zip/top/ann/1.jpg", True),
        ("uploads/g/annie/1.jpg", False),
        ("uploads/ann/1.jpg", False),  # a loose file in gallery "ann" names no subject
        ("enrolments/default/ann/1.jpg", False),
    ],
)
def test_a_reject_names_the_subject_by_its_photo_s_folder(key, expected):
    assert names_subject(key, "ann") is expected


def test_embeddings_only_when_asked_rounded_to_6_decimals(stores, processor):
    subjects, photos, galleries, tombstones = stores
    FaceService(processor, subjects, photos, tombstones).enrol("ann", [ANN_1, ANN_2])
    export = SubjectExport(subjects, photos, galleries, tombstones)
    plain = export.export("ann")
    assert [f["embedding"] for f in plain["faces"]] == [None, None]
    assert plain["enrolment"]["face_count"] == 2 and len(plain["photos"]) == 2
    full = export.export("ann", embeddings=True)
    expected = {f.face_id: f.embedding for f in subjects.get_embeddings("ann")[1]}
    for face in full["faces"]:
        assert face["embedding"] == [round(float(v), 6) for v in expected[face["face_id"]]]
        assert face["model_id"] == processor.model_id and face["photo_versions"] == 1


def test_rows_pending_compaction_are_found_after_a_delete(stores, processor):
    """Deleting the enrolled "ann" leaves gallery g's "ann" alone (another scope); a
    tombstone in g (a part that landed after an erasure) drops her from the compacted
    gallery while the part still holds her, and the export says both."""
    subjects, photos, galleries, tombstones = stores
    meta = GalleryMeta(
        model_id=processor.model_id,
        weights_sha256=processor.card.weights_sha256,
        dim=DIM,
        threshold=processor.threshold,
    )
    part = build_gallery_table(
        subject_ids=["ann", "bob"],
        image_keys=["uploads/g/ann/1.png", "uploads/g/bob/1.png"],
        face_indices=[0, 0],
        bboxes=np.zeros((2, 4), np.float32),
        det_scores=np.ones(2, np.float32),
        embeddings=np.stack([unit(1, 0, 0, 0), unit(0, 1, 0, 0)]),
        meta=meta,
    )
    galleries.write_table(galleries.part_key("g", "p1"), part)
    service = FaceService(processor, subjects, photos, tombstones)
    service.enrol("ann", [ANN_1])
    service.delete_subject("ann")
    galleries.compact("g", erasures=tombstones.all())
    assert SubjectExport(subjects, photos, galleries, tombstones).export("ann")["galleries"][0][
        "compacted"
    ] == {"key": "galleries/g/gallery.parquet", "rows": 1, "image_keys": ["uploads/g/ann/1.png"]}
    tombstones.record("gallery:g", "ann")
    galleries.compact("g", erasures=tombstones.all())

    found = SubjectExport(subjects, photos, galleries, tombstones).export("ann")
    assert found["enrolment"] is None and found["faces"] == [] and found["photos"] == []
    assert found["tombstone"]["deleted_at"] == tombstones.deleted_at("api", "ann")
    assert found["galleries"] == [
        {
            "gallery": "g",
            "compacted": None,
            "delta": None,
            "parts": [
                {
                    "key": "galleries/g/parts/p1.parquet",
                    "rows": 1,
                    "image_keys": ["uploads/g/ann/1.png"],
                }
            ],
            "rejects": [],
        }
    ]


def test_an_orphan_photo_alone_is_held_data_and_nothing_at_all_is_unknown(fresh_aws, stores):
    """A photo under the prefix with no record (an enrolment killed mid-way) is still shown,
    every version counted; objects under galleries/ that are not FaceGate's are skipped."""
    subjects, photos, galleries, tombstones = stores
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    photos.put("ann", "f1", BOB, "image/png")
    photos.put("ann", "f1", BOB, "image/png")
    fresh_aws.s3.put_object(Bucket=fresh_aws.bucket, Key="galleries/g/notes.txt", Body=b"x")
    export = SubjectExport(subjects, photos, galleries, tombstones)
    found = export.export("ann")
    assert found["photos"] == [{"key": "enrolments/default/ann/f1.png", "versions": 2}]
    assert found["enrolment"] is None and found["galleries"] == []
    with pytest.raises(UnknownSubjectError):
        export.export("nobody")


def test_uploads_manifest_rejects_and_gallery_erasures_are_found(fresh_aws, stores):
    """A subject known only from uploads: their single photos (every version), a reject of
    a manifest-mapped archive member (its path names nobody, its row names them), and the
    tombstone of an erasure in one gallery."""
    from facegate.gallery.format import build_rejects_table

    subjects, photos, galleries, tombstones = stores
    s3, bucket = fresh_aws.s3, fresh_aws.bucket
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"one", b"two"):
        s3.put_object(Bucket=bucket, Key="uploads/lab/cleo/1.jpg", Body=body)
    s3.put_object(Bucket=bucket, Key="uploads/lab/dan/1.jpg", Body=b"someone else")
    rejects = build_rejects_table(
        ["uploads/lab/set.zip/IMG_001.jpg", "uploads/lab/set.zip/IMG_002.jpg"],
        ["no_face", "no_face"],
        subject_ids=["cleo", "dan"],
        source_times=["2026-01-01T00:00:00Z", None],
    )
    galleries.write_table(galleries.rejects_key("lab", "p1"), rejects)
    tombstones.record("gallery:lab", "cleo")
    tombstones.record("gallery:other", "dan")

    found = SubjectExport(subjects, photos, galleries, tombstones).export("cleo")
    assert found["uploads"] == [{"key": "uploads/lab/cleo/1.jpg", "versions": 2}]
    (lab,) = found["galleries"]
    assert lab["rejects"] == [
        {
            "key": "galleries/lab/rejects/p1.parquet",
            "rows": 1,
            "image_keys": ["uploads/lab/set.zip/IMG_001.jpg"],
        }
    ]
    (erasure,) = found["erasures"]
    assert erasure["scope"] == "gallery:lab" and erasure["deleted_at"].endswith("Z")
    assert found["tombstone"] is None


def test_rows_in_a_gallery_s_delta_are_found(stores, processor):
    """Compacted twice: the second part's rows live in ``delta.parquet`` (not yet folded
    into ``gallery.parquet``), and the export names them there too."""
    subjects, photos, galleries, tombstones = stores
    meta = GalleryMeta(
        model_id=processor.model_id,
        weights_sha256=processor.card.weights_sha256,
        dim=DIM,
        threshold=processor.threshold,
    )

    def part(subject: str, vector: np.ndarray) -> object:
        return build_gallery_table(
            subject_ids=[subject],
            image_keys=[f"uploads/g/{subject}/1.png"],
            face_indices=[0],
            bboxes=np.zeros((1, 4), np.float32),
            det_scores=np.ones(1, np.float32),
            embeddings=vector[None],
            meta=meta,
        )

    galleries.write_table(galleries.part_key("g", "p1"), part("bob", unit(0, 1, 0, 0)))
    galleries.compact("g")
    galleries.write_table(galleries.part_key("g", "p2"), part("ann", unit(1, 0, 0, 0)))
    assert galleries.compact("g").mode == "incremental"

    (entry,) = SubjectExport(subjects, photos, galleries, tombstones).export("ann")["galleries"]
    assert entry["compacted"] is None
    assert entry["delta"] == {
        "key": "galleries/g/delta.parquet",
        "rows": 1,
        "image_keys": ["uploads/g/ann/1.png"],
    }
