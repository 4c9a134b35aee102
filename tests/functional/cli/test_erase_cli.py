"""``facegate erase <id> --enrolled --gallery <g>`` as an operator runs it, against moto: one
receipt per scope on stdout, the person gone from the gallery's tables and uploads, another
gallery's person of the same id untouched, and a refusal when no scope is named."""

from __future__ import annotations

import json

import numpy as np
from tests_support import unit_rows

from facegate.cli import main
from facegate.errors import UnknownGalleryError
from facegate.gallery.format import GalleryMeta, build_gallery_table
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.tombstones import Tombstones

META = GalleryMeta(model_id="sface", weights_sha256="ab" * 32, dim=8, threshold=0.4)


def _part(subjects: list[str], gallery: str) -> object:
    n = len(subjects)
    return build_gallery_table(
        subject_ids=subjects,
        image_keys=[f"uploads/{gallery}/{s}/{i}.jpg" for i, s in enumerate(subjects)],
        face_indices=np.zeros(n, np.int32),
        bboxes=np.zeros((n, 4), np.float32),
        det_scores=np.ones(n, np.float32),
        embeddings=unit_rows(np.random.default_rng(0), n, 8),
        meta=META,
    )


def test_erase_prints_a_receipt_per_scope_and_leaves_the_other_gallery(aws, capsys):
    s3 = aws_client("s3", aws)
    store = GalleryStore(s3, aws.bucket)
    store.write_table(store.part_key("crew", "p1"), _part(["kim@example.com", "lee"], "crew"))
    store.write_table(store.part_key("guests", "p1"), _part(["kim@example.com"], "guests"))
    s3.put_object(Bucket=aws.bucket, Key="uploads/crew/kim@example.com/0.jpg", Body=b"jpeg")
    guests_before = s3.list_object_versions(Bucket=aws.bucket, Prefix="galleries/guests/")

    assert main(["erase", "kim@example.com", "--gallery", "crew"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    receipt = json.loads(line)
    assert receipt["scope"] == "gallery:crew" and receipt["found"] is True
    assert receipt["totals"]["gallery_part"] == {
        "objects": 1,
        "versions_deleted": 1,
        "rows_removed": 1,
    }
    assert receipt["totals"]["upload_photos"]["rows_removed"] == 1
    crew = store.read_table(store.part_key("crew", "p1"))
    assert crew["subject_id"].to_pylist() == ["lee"]
    guests_after = s3.list_object_versions(Bucket=aws.bucket, Prefix="galleries/guests/")
    assert guests_after["Versions"] == guests_before["Versions"]
    erased = Tombstones.from_settings(aws).all()
    assert erased.in_scope("gallery:crew", ["kim@example.com"])
    assert not erased.in_scope("gallery:guests", ["kim@example.com"])


def test_erase_needs_a_scope_and_an_existing_gallery(aws, capsys):
    assert main(["erase", "kim@example.com"]) != 0
    assert "--enrolled and/or --gallery" in capsys.readouterr().err
    assert main(["erase", "kim@example.com", "--gallery", "nowhere"]) != 0
    assert UnknownGalleryError("x").code in capsys.readouterr().err
