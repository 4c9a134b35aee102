"""The HTTP API on real photos against moto: through FastAPI's TestClient and through the
Lambda handler with API Gateway v2 events. Each test checks the answer and, where it
matters, the AWS state behind it."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.deps import get_pipeline
from app.main import create_app
from facegate.settings import get_settings
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.clients import aws_client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def api_key(aws) -> str:
    return ApiKeyStore(aws_client("dynamodb", aws), aws.keys_table).create("tests")


@pytest.fixture(scope="module")
def client(pipeline, aws, api_key):
    app = create_app()
    app.dependency_overrides[get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: aws
    return TestClient(app, headers={"x-api-key": api_key})


@pytest.fixture(scope="module")
def photo(faces_dir):
    return lambda name: (faces_dir / f"{name}.jpg").read_bytes()


def test_health_names_model_and_threshold(client, pipeline):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model_id"] == pipeline.model_id == "sface+dlib"
    assert body["threshold"] == pipeline.threshold
    assert body["far_thresholds"] == pipeline.card.far_thresholds
    assert set(body["far_thresholds"]) == {"0.01", "0.001"}


def test_compare_and_identify_decide_at_a_requested_far_or_threshold(client, photo, pipeline):
    """``far`` picks the card's calibrated threshold; ``threshold`` overrides per request."""
    pair = {"image_a": b64(photo("person_b_1")), "image_b": b64(photo("person_b_2"))}
    loose = client.post("/compare", json={**pair, "far": 0.01}).json()
    strict = client.post("/compare", json={**pair, "far": "1e-3"}).json()
    assert loose["threshold"] == pytest.approx(pipeline.card.far_thresholds["0.01"], abs=1e-6)
    assert strict["threshold"] == pytest.approx(pipeline.card.far_thresholds["0.001"], abs=1e-6)
    assert loose["threshold"] < strict["threshold"]
    # one similarity, shown to 3 decimals towards each decision
    assert loose["similarity"] == pytest.approx(strict["similarity"], abs=1e-3)
    raised = client.post("/compare", json={**pair, "threshold": 0.99}).json()
    assert raised["threshold"] == 0.99 and raised["match"] is False
    floor = pipeline.card.far_thresholds["0.01"]  # the default floor: no request goes lower
    for route, body in (("/compare", pair), ("/identify", {"image": pair["image_a"]})):
        refused = client.post(route, json={**body, "threshold": -1})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "validation_error"
        assert f"below this deployment's minimum {floor:g}" in error["message"]
    found = client.post("/identify", json={"image": pair["image_a"], "threshold": floor})
    assert found.status_code == 200 and found.json()["threshold"] == floor
    assert all(c["similarity"] >= floor for c in found.json()["candidates"])


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"far": 0.05}, "calibrated FARs: 0.001, 0.01"),
        ({"far": "often"}, "far must be a number"),
        ({"far": 0.001, "threshold": 0.4}, "not both"),
        ({"threshold": 2}, "between -1 and 1"),
    ],
)
def test_bad_decision_rules_are_validation_errors(client, photo, extra, message):
    pair = {"image_a": b64(photo("person_b_1")), "image_b": b64(photo("person_b_2"))}
    answer = client.post("/compare", json={**pair, **extra})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error" and message in error["message"]


def test_form_fields_are_parsed_like_json_ones(client, photo, pipeline):
    """Multipart sends every field as text: the decision rule and the options still apply."""
    files = {"image_a": ("a.jpg", photo("person_b_1")), "image_b": ("b.jpg", photo("person_b_2"))}
    strict = client.post("/compare", files=files, data={"far": "0.001"})
    assert strict.status_code == 200, strict.text
    assert strict.json()["threshold"] == pytest.approx(
        pipeline.card.far_thresholds["0.001"], abs=1e-6
    )
    probe = {"image": ("p.jpg", photo("person_b_1"))}
    for data, message in (
        ({"top_k": "0"}, "top_k must be between 1 and 100"),
        ({"top_k": "many"}, "top_k must be an integer"),
        ({"threshold": "nan"}, "threshold must be finite"),
        ({"subjects": "no"}, "nothing to search"),
    ):
        refused = client.post("/identify", files=probe, data=data)
        assert refused.status_code == 400, refused.text
        assert message in refused.json()["error"]["message"]
    odd = client.post("/embedding", files=probe, data={"multi_face": "biggest"})
    assert odd.status_code == 400 and "multi_face must be one of" in odd.text


def test_api_key_is_required(client, photo):
    body = {"image_a": b64(photo("person_a_1")), "image_b": b64(photo("person_a_2"))}
    for headers in ({"x-api-key": ""}, {"x-api-key": "fg_wrong"}):
        answer = client.post("/compare", json=body, headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"


def test_compare_multipart_match(client, photo):
    files = {"image_a": ("a.jpg", photo("person_b_1")), "image_b": ("b.jpg", photo("person_b_2"))}
    answer = client.post("/compare", files=files)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["match"] is True and body["similarity"] > body["threshold"]
    assert len(body["faces"]) == 2 and all(f["score"] > 0.9 for f in body["faces"])


def test_compare_json_non_match(client, photo):
    body = {"image_a": b64(photo("person_a_2")), "image_b": b64(photo("impostor_1"))}
    answer = client.post("/compare", json=body).json()
    assert answer["match"] is False and answer["similarity"] < answer["threshold"]


def test_compare_against_reference_embedding(client, photo):
    extracted = client.post("/embedding", json={"image": b64(photo("person_a_1"))}).json()
    assert extracted["dim"] == 256 and len(extracted["faces"]) == 1
    reference = extracted["faces"][0]["embedding"]
    same = client.post("/compare", json={"image": b64(photo("person_a_2")), "embedding": reference})
    assert same.json()["match"] is True
    other = client.post(
        "/compare", json={"image": b64(photo("impostor_2")), "embedding": reference}
    )
    assert other.json()["match"] is False


def test_enrol_compare_identify_delete(client, photo, aws):
    files = [
        ("image", ("1.jpg", photo("person_a_1"))),
        ("image", ("2.jpg", b"not a photo")),
    ]
    enrolled = client.post("/subjects/macron/faces", files=files)
    assert enrolled.status_code == 201, enrolled.text
    body = enrolled.json()
    assert body["accepted"] == 1 and body["rejected"] == 1
    assert body["photos"][1]["error"]["code"] == "invalid_image"
    alias = client.post(
        "/enroll", json={"subject_id": "ardern", "images": [b64(photo("person_b_1"))]}
    )
    assert alias.status_code == 201 and alias.json()["accepted"] == 1

    listing = client.get("/subjects", params={"limit": 1}).json()
    assert len(listing["subjects"]) == 1 and listing["next_cursor"]
    rest = client.get("/subjects", params={"cursor": listing["next_cursor"]}).json()
    names = {s["subject_id"] for s in listing["subjects"] + rest["subjects"]}
    assert names == {"macron", "ardern"}

    verify = client.post(
        "/compare", json={"image": b64(photo("person_a_2")), "subject_id": "macron"}
    )
    assert verify.json()["match"] is True and verify.json()["aggregation"] == "max"
    refuse = client.post(
        "/compare", json={"image": b64(photo("impostor_1")), "subject_id": "macron"}
    )
    assert refuse.json()["match"] is False

    hit = client.post("/identify", json={"image": b64(photo("person_b_2"))}).json()
    assert hit["match"] is True and hit["best"]["subject_id"] == "ardern"
    miss = client.post("/identify", json={"image": b64(photo("impostor_2"))}).json()
    # no subject clears the threshold: none is named (a ranked list of non-matches would say
    # who looks most like the probe)
    assert miss["match"] is False and miss["best"] is None and miss["candidates"] == []

    s3 = aws_client("s3", aws)
    prefix = {"Bucket": aws.bucket, "Prefix": "enrolments/default/macron/"}
    assert s3.list_object_versions(**prefix).get("Versions")
    deleted = client.delete("/subjects/macron")
    assert deleted.status_code == 200 and deleted.json()["deleted_faces"] == 1
    assert not s3.list_object_versions(**prefix).get("Versions")
    gone = client.get("/subjects/macron")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_subject"
    after = client.post(
        "/compare", json={"image": b64(photo("person_a_2")), "subject_id": "macron"}
    )
    assert after.status_code == 404


def test_failed_enrolment_leaves_no_photo_behind(client, photo, aws):
    s3 = aws_client("s3", aws)
    prefix = {"Bucket": aws.bucket, "Prefix": "enrolments/default/ghost/"}
    bad_metadata = {"image": b64(photo("person_a_1")), "metadata": {"age": 3}}
    answer = client.post("/subjects/ghost/faces", json=bad_metadata)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "validation_error"
    assert not s3.list_object_versions(**prefix).get("Versions")

    from facegate.storage.subjects import StoredFace, SubjectStore

    other = np.zeros(256, np.float32)
    other[0] = 1.0
    SubjectStore(aws_client("dynamodb", aws), aws.table).put_faces(
        "mixed",
        [StoredFace(face_id="f0", embedding=other, image_key="elsewhere.jpg")],
        "other-model",
        weights_sha256="ab" * 32,
    )
    refused = client.post("/subjects/mixed/faces", json={"image": b64(photo("person_a_1"))})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_mismatch"
    mixed = {"Bucket": aws.bucket, "Prefix": "enrolments/default/mixed/"}
    assert not s3.list_object_versions(**mixed).get("Versions")


def test_identify_in_a_named_gallery_and_s3_photos(client, photo, aws, pipeline):
    from facegate.gallery.format import GalleryMeta, build_gallery_table, write_gallery

    vector = pipeline.process(photo("impostor_1")).primary.vector
    meta = GalleryMeta(
        model_id=pipeline.model_id,
        weights_sha256=pipeline.card.weights_sha256,
        dim=pipeline.card.embedding_dim,
        threshold=pipeline.threshold,
    )
    table = build_gallery_table(
        subject_ids=["obama"],
        image_keys=["obama.jpg"],
        face_indices=[0],
        bboxes=np.zeros((1, 4), np.float32),
        det_scores=np.ones(1, np.float32),
        embeddings=vector[None, :],
        meta=meta,
    )
    sink = pa.BufferOutputStream()
    write_gallery(table, sink)
    s3 = aws_client("s3", aws)
    s3.put_object(
        Bucket=aws.bucket, Key="galleries/vips/gallery.parquet", Body=sink.getvalue().to_pybytes()
    )
    s3.put_object(Bucket=aws.bucket, Key="probes/obama.jpg", Body=photo("impostor_1"))
    probe = f"s3://{aws.bucket}/probes/obama.jpg"
    found = client.post("/identify", json={"image": probe, "gallery": "vips", "subjects": False})
    assert found.status_code == 200, found.text
    assert found.json()["best"]["subject_id"] == "obama"
    s3.put_object(Bucket=aws.bucket, Key="probes/huge.jpg", Body=b"\xff" * (15 * 1024 * 1024 + 1))
    huge = client.post("/identify", json={"image": f"s3://{aws.bucket}/probes/huge.jpg"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "image_too_large"
    foreign = client.post("/identify", json={"image": "s3://someone-else/x.jpg"})
    assert foreign.status_code == 400 and foreign.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"image_a": b64(b"not a photo"), "image_b": b64(b"x")}, 400, "invalid_image"),
        ({"image_a": "%%%"}, 400, "validation_error"),
        (
            {"image_a": b64(b"\xff" * (5 * 1024 * 1024 + 10)), "image_b": "AA=="},
            413,
            "image_too_large",
        ),
        ({"image": b64(b"x"), "embedding": [0.1] * 12}, 400, "validation_error"),
        ({"image": b64(b"x"), "embedding": [0.1] * 256}, 400, "validation_error"),  # norm 1.6
        ({"image": b64(b"x"), "embedding": [1e39] + [0.0] * 255}, 400, "validation_error"),
        (
            {"image": b64(b"x"), "embedding": [0.1] * 256, "model_id": "other"},
            409,
            "model_mismatch",
        ),
    ],
)
def test_bad_requests_get_stable_codes(client, body, status, code):
    answer = client.post("/compare", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


def test_missing_field_is_validation_error(client, photo):
    answer = client.post("/compare", json={"image_a": b64(photo("person_a_1"))})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "validation_error"
    bad_query = client.get("/subjects", params={"limit": 0})
    assert bad_query.status_code == 400 and bad_query.json()["error"]["code"] == "validation_error"


def test_face_errors_are_422(client, faces_dir):
    clothes = np.asarray(Image.open(faces_dir / "person_b_1.jpg").convert("RGB"))[650:, :]
    answer = client.post("/embedding", json={"image": b64(_jpeg(clothes))})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "no_face"
    left = np.asarray(Image.open(faces_dir / "person_a_2.jpg").convert("RGB"))
    right = np.asarray(Image.open(faces_dir / "person_b_1.jpg").convert("RGB"))
    height = min(left.shape[0], right.shape[0])
    pair = _jpeg(np.concatenate([left[:height], right[:height]], axis=1))
    answer = client.post("/embedding", json={"image": b64(pair), "multi_face": "reject"})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "multiple_faces"
    both = client.post("/embedding", json={"image": b64(pair), "multi_face": "all"}).json()
    assert len(both["faces"]) == 2
    small = Image.fromarray(left).resize((60, round(60 * left.shape[0] / left.shape[1])))
    canvas = Image.new("RGB", (400, 400), (128, 128, 128))
    canvas.paste(small, (150, 140))
    tiny = client.post("/embedding", json={"image": b64(_jpeg(np.asarray(canvas)))})
    assert tiny.status_code == 422 and tiny.json()["error"]["code"] == "face_too_small"


def _with_queue(pipeline, aws, api_key, setting: str, name: str) -> tuple[TestClient, str]:
    """A client of an app whose settings name a new queue as ``setting``, and its URL."""
    url = aws_client("sqs", aws).create_queue(QueueName=name)["QueueUrl"]
    settings = aws.model_copy(update={setting: url})
    app = create_app()
    app.dependency_overrides[get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app, headers={"x-api-key": api_key}), url


def test_a_backfill_queues_its_first_listing_page_on_the_ingest_queue(pipeline, aws, api_key):
    """POST /galleries/{g}/backfill answers at once: the embedding function lists the prefix
    (tests/functional/batch/test_backfill.py follows the pages); a bad prefix sends nothing."""
    sqs = aws_client("sqs", aws)
    client, url = _with_queue(pipeline, aws, api_key, "ingest_queue_url", "backfill-ingest")

    bad = client.post("/galleries/old/backfill", json={"prefix": "archive"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "validation_error"
    answer = client.post("/galleries/old/backfill", json={"prefix": "archive/2019/"})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"status": "queued", "gallery": "old", "prefix": "archive/2019/"}
    (sent,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    body = json.loads(sent["Body"])
    assert body["type"] == "facegate.backfill_page" and body["bucket"] == aws.bucket
    assert (body["prefix"], body["gallery"], body["key_marker"]) == ("archive/2019/", "old", None)


def test_reembed_is_queued_for_the_jobs_worker(pipeline, aws, api_key, photo):
    """POST /reembed checks the request, records it as queued and sends the message."""
    sqs = aws_client("sqs", aws)
    client, url = _with_queue(pipeline, aws, api_key, "jobs_queue_url", "reembed-jobs")

    client.post("/subjects/reembed_me/faces", json={"image": b64(photo("person_a_1"))})
    answer = client.post("/reembed", json={"target": "enrolled-fused", "model_id": "sface+dlib"})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {
        "status": "queued",
        "source": "subjects",
        "target": "enrolled-fused",
        "model_id": "sface+dlib",
    }
    status = client.get("/galleries/enrolled-fused/reembed")
    assert status.status_code == 200 and status.json()["status"] == "queued"
    sent = sqs.receive_message(QueueUrl=url)["Messages"]
    assert [m["Body"] for m in sent] == [
        '{"type":"facegate.reembed","version":1,"target":"enrolled-fused",'
        '"model_id":"sface+dlib","source_gallery":null}'
    ]

    for body, status_code, code in (
        ({"target": "x", "model_id": "no-such-model"}, 400, "validation_error"),
        ({"target": "x", "model_id": "sface", "source_gallery": "nothing"}, 404, "unknown_gallery"),
        ({"target": "bad/name", "model_id": "sface"}, 400, "validation_error"),
        ({"model_id": "sface"}, 400, "validation_error"),
    ):
        refused = client.post("/reembed", json=body)
        assert refused.status_code == status_code, refused.text
        assert refused.json()["error"]["code"] == code
    missing = client.get("/galleries/never-requested/reembed")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_gallery"


def test_the_api_applies_the_deployment_s_explicit_minimum(pipeline, aws, api_key, photo):
    """``FACEGATE_MIN_THRESHOLD`` reaches the service the routes use: a request's threshold
    between the card's FAR 1e-2 threshold and the deployment's stricter minimum is refused."""
    card_floor = pipeline.card.far_thresholds["0.01"]
    minimum = round(card_floor + 0.1, 3)
    settings = aws.model_copy(update={"min_threshold": minimum})
    app = create_app()
    app.dependency_overrides[get_pipeline] = lambda: pipeline
    app.dependency_overrides[get_settings] = lambda: settings
    client = TestClient(app, headers={"x-api-key": api_key})
    pair = {"image_a": b64(photo("person_b_1")), "image_b": b64(photo("person_b_2"))}
    refused = client.post("/compare", json={**pair, "threshold": round(card_floor + 0.05, 3)})
    assert refused.status_code == 400, refused.text
    assert f"below this deployment's minimum {minimum:g}" in refused.json()["error"]["message"]
    assert client.post("/compare", json={**pair, "threshold": minimum}).status_code == 200
