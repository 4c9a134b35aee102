"""The collection service on moto: installed models and calibrated FARs only, counts from
the enrolled subjects, deletion that erases every subject of the collection, exports and
attached galleries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from service_fakes import ANN_1, ANN_2, BOB, FakeProcessor, make_card

from facegate.batch.collection_deletion import CollectionDeleter
from facegate.batch.erasure import Eraser
from facegate.errors import (
    CollectionDeletingError,
    DefaultCollectionError,
    ModelMismatchError,
    UnknownCollectionError,
    UnknownGalleryError,
    ValidationError,
)
from facegate.models.card import write_card
from facegate.service import FaceService
from facegate.service import collections as service_module
from facegate.service.collection_export import CollectionExporter
from facegate.service.collections import CollectionService, Counts, enrolled_counts
from facegate.storage.collections import CollectionStore
from facegate.storage.galleries import GalleryStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import StoredFace, SubjectStore
from facegate.storage.tombstones import Tombstones

SHA = "ab" * 32


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """Two installed models, ``fake`` (the deployment's) and ``other``, each calibrated for
    FAR 0.01 and 0.001."""
    for model_id in ("fake", "other"):
        write_card(tmp_path, make_card(model_id))
    return tmp_path


@pytest.fixture
def store(fresh_aws) -> CollectionStore:
    return CollectionStore(fresh_aws.dynamodb, fresh_aws.table, default_model_id="fake")


@pytest.fixture
def make_service(fresh_aws, store, model_dir):  # type: ignore[no-untyped-def]
    """``make_service(counts)``: the service over ``store`` with the deployment's deleter
    and exporter (its bucket, its tombstones), as ``from_settings`` builds them."""
    settings = fresh_aws.settings
    subjects = SubjectStore.from_settings(settings)
    tombstones = Tombstones.from_settings(settings)
    eraser = Eraser(fresh_aws.s3, fresh_aws.bucket, tombstones)
    deleter = CollectionDeleter(store, subjects, PhotoStore.from_settings(settings), eraser)
    exporter = CollectionExporter(subjects, GalleryStore.from_settings(settings), tombstones)

    def make(counts: Counts) -> CollectionService:
        return CollectionService(
            store, counts, model_dir=model_dir, deleter=deleter, exporter=exporter
        )

    return make


@pytest.fixture
def faces(fresh_aws, processor: FakeProcessor) -> FaceService:
    """Enrolments into any collection, with the fake processor (model ``fake``)."""
    settings = fresh_aws.settings
    return FaceService(
        processor,
        SubjectStore.from_settings(settings),
        PhotoStore.from_settings(settings),
        Tombstones.from_settings(settings),
    )


def stored_names(store: CollectionStore) -> list[str]:
    return [c.name for c in store.list(limit=1000)[0]]


def test_create_answers_the_collection_with_its_counts(store, make_service):
    counted: list[str] = []

    def counts(name: str) -> tuple[int, int]:
        counted.append(name)
        return 0, 0

    service = make_service(counts)
    created = service.create("lobby", far=0.001, description="lobby kiosks")
    assert created == {
        "name": "lobby",
        "model_id": "fake",  # the deployment's, when none is named
        "description": "lobby kiosks",
        "threshold": None,
        "far": 0.001,
        "multi_face": None,
        "created_at": created["created_at"],
        "galleries": [],
        "deleting": None,
        "subjects": 0,
        "faces": 0,
    }
    assert store.get("lobby").created_at == created["created_at"] is not None
    assert service.describe("lobby") == created and counted == ["lobby", "lobby"]
    other = service.create("garage", "other", threshold=0.5, multi_face="reject")
    assert (other["model_id"], other["threshold"], other["multi_face"]) == ("other", 0.5, "reject")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_id": "missing"}, "model 'missing' is not installed here; installed: fake, other"),
        ({"far": 0.05}, "calibrated FARs: 0.001, 0.01"),
        ({"far": 0.01, "threshold": 0.5}, "not both"),
    ],
)
def test_a_collection_that_could_not_decide_is_refused_before_it_is_stored(
    store, make_service, kwargs, message
):
    service = make_service(lambda name: (0, 0))
    with pytest.raises(ValidationError, match=message):
        service.create("lobby", **kwargs)
    assert stored_names(store) == ["default"]


def test_delete_erases_every_subject_of_the_collection_and_the_collection(
    fresh_aws, store, make_service, faces
):
    service = make_service(enrolled_counts(SubjectStore.from_settings(fresh_aws.settings)))
    service.create("full")
    service.create("empty")
    faces.in_collection("full").enrol("ann", [ANN_1, ANN_2])
    faces.in_collection("full").enrol("bob", [BOB])
    faces.enrol("ann", [ANN_1])  # default's ann: someone else
    assert (service.describe("full")["subjects"], service.describe("full")["faces"]) == (2, 3)
    with pytest.raises(DefaultCollectionError) as refused:
        service.delete("default")
    assert refused.value.code == "default_collection"

    done, receipt = service.delete("full")

    assert done is True and receipt["deleted"] is True
    assert (receipt["collection"], receipt["subjects_erased"]) == ("full", 2)
    assert [r["subject_id"] for r in receipt["receipts"]] == ["ann", "bob"]
    assert receipt["totals"]["subject_items"]["rows_removed"] == 5  # 2 META + 3 faces
    assert receipt["totals"]["enrolment_photos"]["versions_deleted"] == 3
    with pytest.raises(UnknownCollectionError):
        service.describe("full")
    assert service.counts("full") == (0, 0)
    listed = fresh_aws.s3.list_objects_v2(Bucket=fresh_aws.bucket, Prefix="enrolments/full/")
    assert listed["KeyCount"] == 0
    assert faces.describe_subject("ann")["face_count"] == 1
    assert stored_names(store) == ["default", "empty"]

    assert service.delete("empty") == (
        True,
        {
            "collection": "empty",
            "deleted": True,
            "subjects_erased": 0,
            "galleries_destroyed": [],
            "totals": {},
            "receipts": [],
            "remaining": receipt["remaining"],
        },
    )
    assert stored_names(store) == ["default"]
    with pytest.raises(UnknownCollectionError):
        service.delete("empty")


def test_export_and_attach_check_the_collection_and_the_gallery(fresh_aws, make_service, faces):
    service = make_service(enrolled_counts(SubjectStore.from_settings(fresh_aws.settings)))
    service.create("lobby")
    service.create("guests", "other")
    faces.in_collection("lobby").enrol("ann", [ANN_1])

    exported = service.export("lobby", "lobby-g")
    assert (exported["rows"], exported["subjects"], exported["model_id"]) == (1, 1, "fake")
    attached = service.attach("lobby", "lobby-g")
    assert (attached["galleries"], attached["subjects"], attached["faces"]) == (["lobby-g"], 1, 1)
    assert service.describe("lobby")["galleries"] == ["lobby-g"]
    with pytest.raises(ModelMismatchError, match="'lobby-g' is of model 'fake'"):
        service.attach("guests", "lobby-g")
    with pytest.raises(UnknownGalleryError, match="has not been built"):
        service.attach("lobby", "never-built")
    assert service.describe("guests")["galleries"] == []
    assert service.detach("lobby", "lobby-g")["galleries"] == []

    service.store.begin_deletion("lobby")
    for call in (
        lambda: service.export("lobby", "lobby-g"),
        lambda: service.attach("lobby", "lobby-g"),
        lambda: service.detach("lobby", "lobby-g"),
    ):
        with pytest.raises(CollectionDeletingError):
            call()
    assert service.describe("lobby")["deleting"] is not None


def _enrol(subjects: SubjectStore, subject_id: str, faces: int) -> None:
    rng = np.random.default_rng(len(subject_id))
    vectors = rng.standard_normal((faces, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    subjects.put_faces(
        subject_id,
        [
            StoredFace(
                face_id=f"f{i}", embedding=v, image_key=f"enrolments/default/{subject_id}/f{i}.jpg"
            )
            for i, v in enumerate(vectors)
        ],
        "fake",
        weights_sha256=SHA,
    )


def test_default_counts_every_enrolled_subject_across_pages(fresh_aws, monkeypatch):
    subjects = SubjectStore(fresh_aws.dynamodb, fresh_aws.table)
    counts = enrolled_counts(subjects)
    assert counts("default") == (0, 0)
    for subject_id, faces in (("ann", 1), ("bob", 2), ("cyd", 3)):
        _enrol(subjects, subject_id, faces)
    monkeypatch.setattr(service_module, "MAX_LIST_LIMIT", 1)  # one subject a page
    assert counts("default") == (3, 6)
    assert counts("lobby") == (0, 0)  # not keyed by collection yet: nothing elsewhere
