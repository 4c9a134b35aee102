"""The collection service on moto: installed models and calibrated FARs only, counts from
the enrolled subjects, and deletion of empty collections only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from service_fakes import make_card

from facegate.errors import (
    CollectionNotEmptyError,
    DefaultCollectionError,
    UnknownCollectionError,
    ValidationError,
)
from facegate.models.card import write_card
from facegate.service import collections as service_module
from facegate.service.collections import CollectionService, enrolled_counts
from facegate.storage.collections import CollectionStore
from facegate.storage.subjects import StoredFace, SubjectStore

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


def stored_names(store: CollectionStore) -> list[str]:
    return [c.name for c in store.list(limit=1000)[0]]


def test_create_answers_the_collection_with_its_counts(store, model_dir):
    counted: list[str] = []

    def counts(name: str) -> tuple[int, int]:
        counted.append(name)
        return 0, 0

    service = CollectionService(store, counts, model_dir=model_dir)
    created = service.create("lobby", far=0.001, description="lobby kiosks")
    assert created == {
        "name": "lobby",
        "model_id": "fake",  # the deployment's, when none is named
        "description": "lobby kiosks",
        "threshold": None,
        "far": 0.001,
        "multi_face": None,
        "created_at": created["created_at"],
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
    store, model_dir, kwargs, message
):
    service = CollectionService(store, lambda name: (0, 0), model_dir=model_dir)
    with pytest.raises(ValidationError, match=message):
        service.create("lobby", **kwargs)
    assert stored_names(store) == ["default"]


def test_delete_refuses_default_and_a_collection_that_holds_subjects(store, model_dir):
    held = {"full": (3, 7)}
    service = CollectionService(store, lambda name: held.get(name, (0, 0)), model_dir=model_dir)
    service.create("full")
    service.create("empty")
    with pytest.raises(DefaultCollectionError):
        service.delete("default")
    with pytest.raises(CollectionNotEmptyError, match="holds 3 subjects") as refused:
        service.delete("full")
    assert refused.value.code == "collection_not_empty"
    assert service.delete("empty") == {
        "collection": "empty",
        "deleted": True,
        "subjects_erased": 0,
        "receipts": [],
    }
    assert stored_names(store) == ["default", "full"]
    with pytest.raises(UnknownCollectionError):
        service.delete("empty")


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
