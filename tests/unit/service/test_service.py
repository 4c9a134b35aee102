"""The service layer's decisions, with a fake face processor and real stores on moto.

The processor is a :class:`facegate.types.FaceProcessor` that maps photo bytes to fixed unit
vectors, so every similarity is known exactly and each test states the answer it expects:
which threshold a request is decided at, which reference embeddings are accepted, which
enrolled face a subject is verified on, what an embedding answer holds and what a
re-embedding submission writes (and, when refused, that it writes nothing).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from service_fakes import (
    ANN_1,
    ANN_2,
    ANN_PROBE,
    BOB,
    CARD_DEFAULT,
    DIM,
    FARS,
    TWO,
    VECTORS,
    FakeProcessor,
    make_card,
    unit,
)

from facegate.errors import (
    FaceGateError,
    InvalidImageError,
    ModelMismatchError,
    MultipleFacesError,
    StorageError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.http_errors import status_for
from facegate.models.card import write_card
from facegate.service import (
    FaceService,
    GalleryService,
    compare_photos,
    decision_threshold,
    reference_embedding,
)
from facegate.storage.galleries import GalleryStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Tombstones

# -- the decision threshold --------------------------------------------------------------


@pytest.mark.parametrize(
    "threshold,far,deployment_far,expected",
    [
        (None, None, None, CARD_DEFAULT),  # nothing asked: the card's default
        (None, None, 0.01, FARS["0.01"]),  # FACEGATE_FAR: the card's threshold for it
        (0.55, None, 0.01, 0.55),  # a request's raw threshold beats the deployment's rule
        (None, 0.001, 0.01, FARS["0.001"]),  # and so does a request's FAR
        (None, 1e-3, None, FARS["0.001"]),  # a FAR is looked up by value, not spelling
        (FARS["0.01"], None, None, FARS["0.01"]),  # as low as the floor, and no lower
    ],
)
def test_a_request_is_decided_at_its_rule_else_the_deployment_s(
    threshold, far, deployment_far, expected
):
    fake = FakeProcessor(VECTORS, deployment_far=deployment_far)
    assert decision_threshold(fake, threshold, far) == pytest.approx(expected)


@pytest.mark.parametrize(
    "threshold,far,message",
    [
        (0.4, 0.001, "not both"),
        (None, 0.05, "calibrated FARs: 0.001, 0.01"),
        (1.5, None, "between -1 and 1"),
    ],
)
def test_bad_decision_rules_are_validation_errors(processor, threshold, far, message):
    with pytest.raises(ValidationError, match=message):
        decision_threshold(processor, threshold, far)


def test_every_face_operation_decides_at_the_request_s_rule(fresh_aws, processor):
    service = FaceService(
        processor,
        SubjectStore.from_settings(fresh_aws.settings),
        PhotoStore.from_settings(fresh_aws.settings),
    )
    service.enrol("ann", [ANN_1])
    similarity = float(unit(1, 1, 0.2, 0) @ unit(1, 0, 0, 0))  # about 0.70
    reference = VECTORS[ANN_1][0].tolist()
    answers = {
        "photos": lambda **rule: service.compare_photos(ANN_PROBE, ANN_1, **rule),
        "embedding": lambda **rule: service.compare_embedding(ANN_PROBE, reference, **rule),
        "subject": lambda **rule: service.compare_subject(ANN_PROBE, "ann", **rule),
        "identify": lambda **rule: service.identify(ANN_PROBE, **rule),
    }
    for name, answer in answers.items():
        default = answer()
        assert default["threshold"] == pytest.approx(CARD_DEFAULT), name
        strict = answer(far=0.001)
        assert strict["threshold"] == pytest.approx(FARS["0.001"]), name
        above = answer(threshold=round(similarity + 0.01, 3))
        assert above["threshold"] == pytest.approx(similarity + 0.01, abs=1e-3), name
        assert above["match"] is False and default["match"] is True, name
        with pytest.raises(ValidationError, match="not both"):
            answer(threshold=0.5, far=0.01)


# -- reference embeddings ----------------------------------------------------------------


def test_a_reference_embedding_of_the_served_model_is_accepted(processor):
    vector = reference_embedding(processor, [0.5, 0.5, 0.5, 0.5], "fake")
    assert vector.dtype == np.float32 and vector.shape == (DIM,)
    assert reference_embedding(processor, (1, 0, 0, 0)).tolist() == [1.0, 0.0, 0.0, 0.0]


#: ``probes.NORM_TOLERANCE``, as documented: a reference's norm may be 1 +- 1e-3.
NORM_TOLERANCE = 1e-3


def test_a_reference_within_the_norm_tolerance_is_accepted_unchanged(processor):
    """Float32 round trips (JSON, other clients' normalisation) move a unit vector's norm by
    ~1e-7: well inside the tolerance, and the vector is used as sent."""
    scale = 1 + NORM_TOLERANCE / 2
    vector = reference_embedding(processor, [0.5 * scale] * DIM)
    assert vector.tolist() == pytest.approx([0.5 * scale] * DIM)


@pytest.mark.parametrize(
    "values,model_id,error,message",
    [
        ([0.5] * DIM, "other-model", ModelMismatchError, "embedding is from 'other-model'"),
        ([0.5] * (DIM + 1), None, ValidationError, f"must be {DIM} numbers"),
        ([0.5] * 12, None, ValidationError, f"must be {DIM} numbers"),
        ([[0.5] * DIM], None, ValidationError, f"must be {DIM} numbers"),
        ([0.5, float("nan"), 0.5, 0.5], None, ValidationError, "finite"),
        ([0.5, float("inf"), 0.5, 0.5], None, ValidationError, "finite"),
        ([1e39, 0, 0, 0], None, ValidationError, "unit length"),  # checked before float32
        (["a", "b", "c", "d"], None, ValidationError, "list of numbers"),
        ({"x": 1}, None, ValidationError, "list of numbers"),
        ([0.6] * DIM, None, ValidationError, "unit length"),  # norm 1.2
        ([0.0] * DIM, None, ValidationError, "unit length"),
        ([0.5 * (1 + 3 * NORM_TOLERANCE)] * DIM, None, ValidationError, "unit length"),
    ],
)
def test_other_references_are_refused(processor, values, model_id, error, message):
    """The wrong model is a 409 (``model_mismatch``); a vector no model could have made for
    this API (wrong size, not finite, not unit length) is the caller's mistake: 400."""
    with pytest.raises(error, match=message) as raised:
        reference_embedding(processor, values, model_id)
    assert type(raised.value) is error


def test_a_refused_reference_is_refused_before_the_photo_is_read(fresh_aws, processor):
    service = FaceService(
        processor,
        SubjectStore.from_settings(fresh_aws.settings),
        PhotoStore.from_settings(fresh_aws.settings),
    )
    with pytest.raises(ValidationError):
        service.compare_embedding(b"not a photo", [0.1] * 12)
    with pytest.raises(ValidationError):
        service.compare_embedding(b"not a photo", [0.1] * DIM)
    assert processor.policies == []


def test_a_subject_is_verified_on_its_best_enrolled_face(fresh_aws, processor):
    service = FaceService(
        processor,
        SubjectStore.from_settings(fresh_aws.settings),
        PhotoStore.from_settings(fresh_aws.settings),
    )
    enrolled = service.enrol("ann", [BOB, ANN_2, ANN_1])
    face_ids = [p["face_id"] for p in enrolled["photos"]]
    answer = service.compare_subject(ANN_PROBE, "ann")
    assert answer["best_face_id"] == face_ids[1]  # ANN_2: the closest to the probe
    expected = float(VECTORS[ANN_PROBE][0] @ VECTORS[ANN_2][0])
    assert answer["similarity"] == pytest.approx(expected, abs=1e-3)  # shown to 3 decimals
    assert answer["enrolled_faces"] == 3 and answer["aggregation"] == "max"
    assert answer["match"] is True  # BOB's photo, far from the probe, does not veto it


def test_a_subject_with_no_faces_left_is_a_conflict_not_a_crash(fresh_aws, processor):
    """A DELETE interrupted after the face items went (its retry finishes it) leaves the
    subject's META item alone: verifying against it is ``no_enrolled_faces``, not a
    ``ValueError`` from an empty argmax; nothing is decoded before that is known."""
    settings = fresh_aws.settings
    subjects = SubjectStore.from_settings(settings)
    service = FaceService(processor, subjects, PhotoStore.from_settings(settings))
    service.enrol("ann", [ANN_1, ANN_2])
    for face_id in [p.face_id for p in subjects.get_embeddings("ann")[1]]:
        fresh_aws.dynamodb.delete_item(
            TableName=settings.table,
            Key={"pk": {"S": "SUBJECT#default#ann"}, "sk": {"S": f"FACE#{face_id}"}},
        )
    processor.policies.clear()
    with pytest.raises(FaceGateError, match="'ann' has no enrolled faces") as raised:
        service.compare_subject(ANN_PROBE, "ann")
    assert raised.value.code == "no_enrolled_faces" and status_for(raised.value) == 409
    assert processor.policies == []


def test_a_subject_of_another_model_is_refused(fresh_aws, processor):
    settings = fresh_aws.settings
    FaceService(
        FakeProcessor(VECTORS, card=make_card("old-model")),
        SubjectStore.from_settings(settings),
        PhotoStore.from_settings(settings),
    ).enrol("ann", [ANN_1])
    service = FaceService(
        processor, SubjectStore.from_settings(settings), PhotoStore.from_settings(settings)
    )
    with pytest.raises(ModelMismatchError, match="enrolled with 'old-model'"):
        service.compare_subject(ANN_PROBE, "ann")


def test_two_photos_name_the_one_that_failed_when_labelled(processor):
    with pytest.raises(InvalidImageError, match=r"^b\.jpg: not a photo$"):
        compare_photos(processor, ANN_1, b"junk", threshold=0.4, labels=("a.jpg", "b.jpg"))
    with pytest.raises(InvalidImageError, match=r"^not a photo$"):
        compare_photos(processor, b"junk", ANN_1, threshold=0.4)
    result = compare_photos(processor, ANN_1, ANN_2, threshold=0.9)
    assert result.similarity == pytest.approx(float(VECTORS[ANN_1][0] @ VECTORS[ANN_2][0]))
    assert result.match is False and result.threshold == 0.9 and result.model_id == "fake"


# -- embedding answers -------------------------------------------------------------------


def test_the_embedding_answer_holds_every_kept_face(fresh_aws, processor):
    service = FaceService(
        processor,
        SubjectStore.from_settings(fresh_aws.settings),
        PhotoStore.from_settings(fresh_aws.settings),
    )
    both = service.embed(TWO)
    assert processor.policies == ["all"]
    assert (both["model_id"], both["dim"], both["detected"]) == ("fake", DIM, 2)
    assert [f["face_index"] for f in both["faces"]] == [0, 1]
    assert both["faces"][1]["embedding"] == pytest.approx(VECTORS[TWO][1].tolist())
    assert both["faces"][0]["box"] == [0.0, 10.0, 50.0, 70.0]
    assert set(both["faces"][0]) == {"face_index", "box", "score", "landmarks", "embedding"}
    json.dumps(both)  # plain JSON types only: no numpy scalars or arrays

    largest = service.embed(TWO, multi_face="largest")
    assert len(largest["faces"]) == 1 and largest["detected"] == 2
    with pytest.raises(MultipleFacesError):
        service.embed(TWO, multi_face="reject")
    with pytest.raises(ValidationError, match="multi_face must be one of"):
        service.embed(TWO, multi_face="biggest")
    assert processor.policies == ["all", "largest", "reject"]


# -- re-embedding submissions ------------------------------------------------------------


@pytest.fixture
def galleries(fresh_aws, tmp_path) -> GalleryService:
    """A gallery service on moto with one installed model (``fused``) and a jobs queue."""
    from facegate.storage.clients import aws_client

    settings = fresh_aws.settings
    write_card(tmp_path / "models", make_card("fused"))
    sqs = aws_client("sqs", settings)
    url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    return GalleryService(
        GalleryStore(fresh_aws.s3, settings.bucket),
        Tombstones.from_settings(settings),
        s3=fresh_aws.s3,
        sqs=sqs,
        jobs_queue_url=url,
        model_dir=tmp_path / "models",
        ingest_queue_url=None,
        backfill_chunk_size=settings.archive_chunk_size,
    )


def _sent(service: GalleryService) -> list[str]:
    assert service.jobs_queue_url is not None
    answer = service.sqs.receive_message(QueueUrl=service.jobs_queue_url, MaxNumberOfMessages=10)
    return [m["Body"] for m in answer.get("Messages", [])]


def _status_keys(fresh_aws) -> list[str]:
    listed = fresh_aws.s3.list_objects_v2(Bucket=fresh_aws.bucket, Prefix="reembed/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_a_submission_records_one_status_document_and_queues_the_request(fresh_aws, galleries):
    status = galleries.submit_reembed("staff-v2", "fused")
    assert status == {
        "status": "queued",
        "source": "subjects",
        "target": "staff-v2",
        "model_id": "fused",
    }
    stored = fresh_aws.s3.get_object(Bucket=fresh_aws.bucket, Key="reembed/staff-v2.json")
    assert json.loads(stored["Body"].read()) == status
    assert stored["ContentType"] == "application/json"
    assert stored["ServerSideEncryption"] == "AES256"
    assert galleries.reembed_status("staff-v2") == status
    assert _sent(galleries) == [
        '{"type":"facegate.reembed","version":1,"target":"staff-v2",'
        '"model_id":"fused","source_gallery":null}'
    ]


def test_a_gallery_source_must_have_parts(fresh_aws, galleries):
    from facegate.gallery.format import GalleryMeta, build_gallery_table

    with pytest.raises(UnknownGalleryError, match="'staff' has no parts"):
        galleries.submit_reembed("staff-v2", "fused", "staff")
    meta = GalleryMeta(model_id="old", weights_sha256="cd" * 32, dim=DIM, threshold=0.4)
    table = build_gallery_table(
        subject_ids=["ann"],
        image_keys=["uploads/staff/ann/1.jpg"],
        face_indices=[0],
        bboxes=np.zeros((1, 4), np.float32),
        det_scores=np.ones(1, np.float32),
        embeddings=unit(1, 0, 0, 0)[None, :],
        meta=meta,
    )
    galleries.galleries.write_table(GalleryStore.part_key("staff", "p0"), table)
    status = galleries.submit_reembed("staff-v2", "fused", "staff")
    assert status["source"] == "staff" and status["status"] == "queued"
    assert json.loads(_sent(galleries)[0])["source_gallery"] == "staff"


@pytest.mark.parametrize(
    "target,model_id,error,message",
    [
        ("staff-v2", "not-installed", ValidationError, "installed: fused"),
        ("bad/name", "fused", ValidationError, "target gallery"),
        ("staff-v2", "", ValidationError, "model_id"),
    ],
)
def test_a_refused_submission_writes_nothing(
    fresh_aws, galleries, target, model_id, error, message
):
    with pytest.raises(error, match=message):
        galleries.submit_reembed(target, model_id)
    assert _status_keys(fresh_aws) == [] and _sent(galleries) == []


def test_without_a_jobs_queue_nothing_is_recorded(fresh_aws, galleries):
    galleries.jobs_queue_url = None
    with pytest.raises(StorageError, match="no jobs queue"):
        galleries.submit_reembed("staff-v2", "fused")
    assert _status_keys(fresh_aws) == []


def test_an_unrequested_re_embedding_has_no_status(galleries):
    with pytest.raises(UnknownGalleryError, match="no re-embedding into 'nothing'"):
        galleries.reembed_status("nothing")
