"""Re-embedding on a model change: stored photos embedded again into a new gallery (moto)."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from tests_support import erasures_in

from facegate.batch.embedding import PhotoInput, embed_photos
from facegate.batch.job_worker import JobWorker, WorkerConfig
from facegate.batch.reembed import PhotoFetcher, ReembedRequest, get_status, split_member
from facegate.batch.reembed_job import run_reembed
from facegate.batch.wiring import model_pipelines
from facegate.errors import (
    InvalidImageError,
    ModelMismatchError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.gallery.format import gallery_embeddings, read_gallery_meta
from facegate.models.fused import DEFAULT_FUSED_ID
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.service import FaceService
from facegate.settings import Settings
from facegate.storage.clients import aws_client
from facegate.storage.galleries import GalleryStore
from facegate.storage.jobs import JobStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore

SINGLES = {
    "uploads/g/person_a/person_a_1.jpg": "person_a_1.jpg",
    "uploads/g/person_b/person_b_1.jpg": "person_b_1.jpg",
    "uploads/g/impostor/impostor_1.jpg": "impostor_1.jpg",
}
MEMBERS = {"person_a/a2.jpg": "person_a_2.jpg", "person_b/b2.jpg": "person_b_2.jpg"}


@pytest.fixture(scope="module")
def sface() -> FacePipeline:
    """The model the source galleries were built with (the upgrade is to the fused one)."""
    pipeline = FacePipeline(Settings(model_id="sface"))
    pipeline.warm_up()
    return pipeline


@pytest.fixture(scope="module")
def fused() -> FacePipeline:
    pipeline = FacePipeline(Settings(model_id=DEFAULT_FUSED_ID))
    pipeline.warm_up()
    return pipeline


@pytest.fixture
def source_gallery(fresh_aws, faces_dir, sface) -> GalleryStore:
    """Gallery ``g`` as the upload job leaves it: single uploads and a zip's members."""
    s3, bucket = fresh_aws.s3, fresh_aws.bucket
    for key, name in SINGLES.items():
        s3.put_object(Bucket=bucket, Key=key, Body=(faces_dir / name).read_bytes())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for member, name in MEMBERS.items():
            zf.writestr(member, (faces_dir / name).read_bytes())
    s3.put_object(Bucket=bucket, Key="uploads/g/set.zip", Body=archive.getvalue())
    photos = [
        PhotoInput(k, k.split("/")[2], (faces_dir / n).read_bytes()) for k, n in SINGLES.items()
    ]
    photos += [
        PhotoInput(f"uploads/g/set.zip/{m}", m.split("/")[0], (faces_dir / n).read_bytes())
        for m, n in MEMBERS.items()
    ]
    store = GalleryStore(s3, bucket)
    part = embed_photos(sface, photos, policy="largest")
    store.write_table(store.part_key("g", "p1"), part.gallery)
    store.compact("g")
    return store


def test_split_member():
    assert split_member("uploads/g/set.zip/a/b.jpg") == ("uploads/g/set.zip", "a/b.jpg")
    assert split_member("uploads/g/a/b.jpg") == ("uploads/g/a/b.jpg", None)


def test_a_gallery_is_re_embedded_with_the_new_model(fresh_aws, source_gallery, fused, faces_dir):
    request = ReembedRequest("g-fused", DEFAULT_FUSED_ID, "g")
    report = run_reembed(fused, fresh_aws.s3, fresh_aws.bucket, request)
    assert (report.photos, report.faces, report.rejects, report.rows) == (5, 5, 0, 5)
    key = source_gallery.gallery_key("g-fused")
    table = source_gallery.read_table(key)
    meta = read_gallery_meta(
        io.BytesIO(fresh_aws.s3.get_object(Bucket=fresh_aws.bucket, Key=key)["Body"].read())
    )
    assert meta.model_id == DEFAULT_FUSED_ID and meta.dim == 256
    assert sorted(table.column("image_key").to_pylist()) == sorted(
        list(SINGLES) + [f"uploads/g/set.zip/{m}" for m in MEMBERS]
    )
    rows = dict(zip(table.column("image_key").to_pylist(), gallery_embeddings(table), strict=True))
    direct = fused.process(faces_dir / "person_b_2.jpg", policy="largest").primary.vector
    # The gallery embedded the member in a batch, ``direct`` alone: equal up to float rounding.
    assert float(rows["uploads/g/set.zip/person_b/b2.jpg"] @ direct) > 0.9999
    assert get_status(fresh_aws.s3, fresh_aws.bucket, "g-fused")["status"] == "done"
    # the source gallery is untouched and still sface
    assert source_gallery.read_table(source_gallery.gallery_key("g")).num_rows == 5


def test_a_photo_gone_since_becomes_a_reject_not_a_gap(fresh_aws, source_gallery, fused):
    fresh_aws.s3.delete_object(Bucket=fresh_aws.bucket, Key="uploads/g/impostor/impostor_1.jpg")
    report = run_reembed(
        fused, fresh_aws.s3, fresh_aws.bucket, ReembedRequest("g2", DEFAULT_FUSED_ID, "g")
    )
    assert (report.photos, report.faces, report.rejects) == (5, 4, 1)
    rejects = source_gallery.read_table(source_gallery.list_rejects("g2")[0]).to_pylist()
    assert [(r["image_key"], r["reason"]) for r in rejects] == [
        ("uploads/g/impostor/impostor_1.jpg", "invalid_image")
    ]


def test_enrolled_subjects_are_re_embedded_from_their_stored_photos(
    fresh_aws, sface, fused, faces_dir
):
    settings = fresh_aws.settings
    service = FaceService(
        sface, SubjectStore.from_settings(settings), PhotoStore.from_settings(settings)
    )
    service.enrol(
        "ann",
        [(faces_dir / "person_a_1.jpg").read_bytes(), (faces_dir / "person_a_2.jpg").read_bytes()],
    )
    service.enrol("bob", [(faces_dir / "person_b_1.jpg").read_bytes()])
    service.enrol("cat", [(faces_dir / "impostor_1.jpg").read_bytes()])
    report = run_reembed(
        fused,
        fresh_aws.s3,
        fresh_aws.bucket,
        ReembedRequest("subjects-fused", DEFAULT_FUSED_ID),
        subjects=SubjectStore.from_settings(settings),
        # bob was deleted once and enrolled again since; cat's DELETE is under way (its
        # tombstone is newer than its faces, which are about to go).
        erasures=erasures_in("api", {"bob": "2026-01-01T00:00:00Z", "cat": "2999-01-01T00:00:00Z"}),
    )
    assert (report.source, report.photos, report.faces, report.rows) == ("subjects", 3, 3, 3)
    store = GalleryStore(fresh_aws.s3, fresh_aws.bucket)
    table = store.read_table(store.gallery_key("subjects-fused"))
    assert sorted(table.column("subject_id").to_pylist()) == ["ann", "ann", "bob"]


def test_requests_are_checked(fresh_aws, source_gallery, fused, sface):
    with pytest.raises(ValidationError, match="must differ"):
        ReembedRequest("g", "sface", "g")
    with pytest.raises(ModelMismatchError):
        run_reembed(
            sface, fresh_aws.s3, fresh_aws.bucket, ReembedRequest("x", DEFAULT_FUSED_ID, "g")
        )
    with pytest.raises(UnknownGalleryError):
        run_reembed(
            fused, fresh_aws.s3, fresh_aws.bucket, ReembedRequest("x", DEFAULT_FUSED_ID, "nope")
        )
    message = ReembedRequest("x", DEFAULT_FUSED_ID, "g").to_message()
    assert ReembedRequest.from_message(message) == ReembedRequest("x", DEFAULT_FUSED_ID, "g")


def test_the_jobs_worker_runs_requests_and_records_failures(fresh_aws, source_gallery, sface):
    sqs = aws_client("sqs", fresh_aws.settings)
    urls = [sqs.create_queue(QueueName=n)["QueueUrl"] for n in ("jobs", "aggregate")]
    worker = JobWorker(
        sface,
        fresh_aws.s3,
        sqs,
        JobStore(fresh_aws.dynamodb, fresh_aws.table),
        WorkerConfig(fresh_aws.bucket, *urls, reembed_chunk_size=2),
        pipeline_factory=model_pipelines(FacePipeline, Settings(model_id="sface"), sface),
    )
    records = [
        {"messageId": str(i), "body": ReembedRequest(t, m, "g").to_message()}
        for i, (t, m) in enumerate([("g-fused", DEFAULT_FUSED_ID), ("g-none", "no-such-model")])
    ]
    assert worker.handle({"Records": records}) == {"batchItemFailures": []}
    # Fanned out: the request listed its 5 photos and queued them as chunks of 2.
    running = get_status(fresh_aws.s3, fresh_aws.bucket, "g-fused")
    assert (running["status"], running["photos"], running["chunks"]) == ("running", 5, 3)
    chunks = _drain(sqs, urls[0])
    assert [json.loads(c["body"])["type"] for c in chunks] == ["facegate.reembed_chunk"] * 3
    # Taken one per invocation, in any order (the last one done compacts), one twice.
    for chunk in [chunks[2], chunks[0], chunks[0], chunks[1]]:
        assert worker.handle({"Records": [chunk]}) == {"batchItemFailures": []}
    done = get_status(fresh_aws.s3, fresh_aws.bucket, "g-fused")
    assert done["status"] == "done" and done["rows"] == 5 and done["model_id"] == DEFAULT_FUSED_ID
    assert (done["photos"], done["faces"], done["parts"]) == (5, 5, 3)
    assert len(source_gallery.list_parts("g-fused")) == 3
    failed = get_status(fresh_aws.s3, fresh_aws.bucket, "g-none")
    assert failed["status"] == "failed" and failed["error"]["code"] == "model_not_found"
    assert worker.pipeline_for(DEFAULT_FUSED_ID).detector is sface.detector
    with pytest.raises(UnknownGalleryError):
        get_status(fresh_aws.s3, fresh_aws.bucket, "never")
    assert json.loads(records[0]["body"])["source_gallery"] == "g"


def _drain(sqs, url: str) -> list[dict]:
    records = []
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for message in got:
            records.append({"messageId": message["MessageId"], "body": message["Body"]})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return records


def test_photo_fetcher_reads_archive_members_without_downloading_the_archive(fresh_aws, faces_dir):
    """Re-embedding reads a zip as the upload job does: its end and the members asked for.
    A 16 MiB stored filler member beside the photo is never fetched."""
    s3, bucket = fresh_aws.s3, fresh_aws.bucket
    photo = (faces_dir / "person_a_2.jpg").read_bytes()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("filler/noise.bin", np.random.default_rng(0).bytes(16 << 20))
        zf.writestr("person_a/a2.jpg", photo)
    s3.put_object(Bucket=bucket, Key="uploads/g/big.zip", Body=archive.getvalue())
    fetched: list[int] = []
    s3.meta.events.register(
        "after-call.s3.GetObject",
        lambda parsed, **_: fetched.append(int(parsed.get("ContentLength", 0))),
    )
    fetcher = PhotoFetcher(s3, bucket, max_bytes=15 * 1024 * 1024)
    assert fetcher("uploads/g/big.zip/person_a/a2.jpg") == photo
    assert sum(fetched) < len(photo) + 512 * 1024 < archive.tell() // 16
    with pytest.raises(InvalidImageError):
        fetcher("uploads/g/gone.zip/person_a/a2.jpg")
