"""Which galleries an erasure reaches: the gallery itself and every gallery re-embedded from
it (transitively), never another gallery's person of the same id; for the enrolled subjects,
the galleries re-embedded from them. On moto, with real gallery tables and the re-embedding
records the jobs worker writes (``reembed/<target>.json``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from tests_support import erasure_key_for_tests, unit_rows

from facegate.batch.erasure import Eraser
from facegate.batch.reembed import put_status
from facegate.errors import UnknownGalleryError
from facegate.gallery.format import GalleryMeta, build_gallery_table
from facegate.storage.galleries import GalleryStore
from facegate.storage.tombstones import Tombstones

META = GalleryMeta(model_id="sface", weights_sha256="cd" * 32, dim=8, threshold=0.4)


@pytest.fixture
def eraser(fresh_aws) -> Eraser:
    fresh_aws.s3.put_bucket_versioning(
        Bucket=fresh_aws.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    tombstones = Tombstones(fresh_aws.dynamodb, fresh_aws.settings.table, erasure_key_for_tests())
    return Eraser(fresh_aws.s3, fresh_aws.bucket, tombstones)


def _write(
    store: GalleryStore,
    gallery: str,
    subjects: list[str],
    scope: str | None,
    uploaded_at: str | None = None,
) -> None:
    n = len(subjects)
    table = build_gallery_table(
        subject_ids=subjects,
        image_keys=[f"uploads/src/{s}/{i}.jpg" for i, s in enumerate(subjects)],
        face_indices=np.zeros(n, np.int32),
        bboxes=np.zeros((n, 4), np.float32),
        det_scores=np.ones(n, np.float32),
        embeddings=unit_rows(np.random.default_rng(n), n, 8),
        meta=replace(META, subject_scope=scope),
        source_times=None if uploaded_at is None else [uploaded_at] * n,
    )
    store.write_table(store.part_key(gallery, "p1"), table)


def _subjects(store: GalleryStore, gallery: str) -> list[str]:
    return store.read_table(store.part_key(gallery, "p1"))["subject_id"].to_pylist()


def test_an_erasure_reaches_the_galleries_re_embedded_from_its_gallery(eraser, fresh_aws):
    store = eraser.galleries
    _write(store, "src", ["ann", "bob"], None)
    _write(store, "src-v2", ["ann", "bob"], "gallery:src")  # re-embedded from src
    _write(store, "src-v3", ["ann"], "gallery:src")  # and again, from src-v2
    _write(store, "other", ["ann"], None)  # another ann
    put_status(fresh_aws.s3, fresh_aws.bucket, "src-v2", {"status": "done", "source": "src"})
    put_status(fresh_aws.s3, fresh_aws.bucket, "src-v3", {"status": "done", "source": "src-v2"})
    put_status(fresh_aws.s3, fresh_aws.bucket, "enrolled", {"status": "done", "source": "subjects"})

    assert eraser.galleries_in_scope("gallery:src") == ["src", "src-v2", "src-v3"]
    receipt = eraser.erase("ann", "gallery:src")
    assert receipt.galleries == ["src", "src-v2", "src-v3"]
    assert _subjects(store, "src") == _subjects(store, "src-v2") == ["bob"]
    assert _subjects(store, "src-v3") == []
    assert _subjects(store, "other") == ["ann"]
    assert receipt.totals()["gallery_part"] == {
        "objects": 3,
        "versions_deleted": 3,
        "rows_removed": 3,
    }
    # Compaction of a re-embedded gallery applies the source's tombstone to a late part.
    _write(store, "src-v2", ["ann", "bob"], "gallery:src", uploaded_at="2020-01-01T00:00:00Z")
    report = store.compact("src-v2", erasures=eraser.tombstones.all())
    assert (report.rows_out, report.deleted_dropped) == (1, 1)


def test_the_enrolled_subjects_scope_reaches_their_re_embedded_galleries(eraser, fresh_aws):
    _write(eraser.galleries, "enrolled", ["ann", "bob"], "api")
    put_status(fresh_aws.s3, fresh_aws.bucket, "enrolled", {"status": "done", "source": "subjects"})
    assert eraser.galleries_in_scope("api") == ["enrolled"]
    eraser.erase("ann", "api")
    assert _subjects(eraser.galleries, "enrolled") == ["bob"]


def test_a_gallery_nothing_is_held_of_is_refused_before_a_tombstone(eraser):
    with pytest.raises(UnknownGalleryError):
        eraser.erase("ann", "gallery:nowhere")
    assert eraser.tombstones.all().times == {}
