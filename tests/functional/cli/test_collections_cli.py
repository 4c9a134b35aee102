"""``facegate collections create | list | show`` as an operator runs them, against moto.

The commands go through the same service as the API's routes: an installed model and a
calibrated FAR only, ``default`` first and always there, counts from the enrolled subjects.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from facegate.cli import main
from facegate.storage.clients import aws_client
from facegate.storage.collections import CollectionStore
from facegate.storage.subjects import StoredFace, SubjectStore


@pytest.fixture
def store(aws) -> CollectionStore:
    collections = CollectionStore.from_settings(aws)
    for collection in collections.list(limit=1000)[0]:  # the module's table: start from none
        if collection.name != "default":
            collections.delete(collection.name)
    return collections


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_prints_the_collection_and_stores_it(store, capsys, aws):
    code, out, _ = run(
        capsys,
        "collections",
        "create",
        "lobby",
        "--far",
        "0.001",
        "--description",
        "lobby kiosks",
        "--multi-face",
        "reject",
    )
    assert code == 0
    created = json.loads(out)
    assert created["name"] == "lobby" and created["model_id"] == aws.model_id
    assert (created["far"], created["threshold"], created["multi_face"]) == (0.001, None, "reject")
    assert store.get("lobby").to_dict() == {
        k: v for k, v in created.items() if k not in ("subjects", "faces")
    }
    code, out, _ = run(
        capsys, "collections", "create", "garage", "--model-id", "sface", "--threshold", "0.5"
    )
    assert code == 0 and json.loads(out)["model_id"] == "sface"
    assert store.get("garage").threshold == 0.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["lobby", "--model-id", "resnet9000"],
            "validation_error: model 'resnet9000' is not installed",
        ),
        (["lobby", "--far", "0.05"], "validation_error: model 'sface+dlib' has no threshold"),
        (["lobby", "--threshold", "1.5"], "validation_error: threshold must be between -1 and 1"),
        (["default"], "collection_exists: collection 'default' always exists"),
    ],
)
def test_refusals_exit_2_with_the_code_and_store_nothing(store, capsys, options, message):
    code, out, err = run(capsys, "collections", "create", *options)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err
    assert [c.name for c in store.list()[0]] == ["default"]


def test_a_name_is_taken_once(store, capsys):
    assert run(capsys, "collections", "create", "lobby")[0] == 0
    code, _, err = run(capsys, "collections", "create", "lobby", "--threshold", "0.6")
    assert code == 2 and "error: collection_exists: collection 'lobby' already exists" in err
    assert store.get("lobby").threshold is None


def test_threshold_and_far_are_exclusive_options(store, capsys):
    with pytest.raises(SystemExit) as done:
        main(["collections", "create", "lobby", "--threshold", "0.5", "--far", "0.01"])
    assert done.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert [c.name for c in store.list()[0]] == ["default"]


def _enrol(aws, subject_id: str, faces: int) -> None:
    vectors = np.eye(faces, 4, dtype=np.float32)
    SubjectStore(aws_client("dynamodb", aws), aws.table).put_faces(
        subject_id,
        [
            StoredFace(
                face_id=f"f{i}", embedding=v, image_key=f"enrolments/default/{subject_id}/f{i}.jpg"
            )
            for i, v in enumerate(vectors)
        ],
        "sface+dlib",
        weights_sha256="ab" * 32,
    )


def test_list_and_show_give_default_first_with_the_enrolled_counts(store, capsys, aws):
    _enrol(aws, "ann", 2)
    try:
        assert run(capsys, "collections", "create", "lobby", "--far", "0.01")[0] == 0
        assert run(capsys, "collections", "create", "annex", "--threshold", "0.45")[0] == 0
        code, out, _ = run(capsys, "collections", "list")
        assert code == 0
        rows = [line.split() for line in out.splitlines()]
        assert rows[0] == ["name", "model", "subjects", "faces", "rule", "created"]
        assert rows[1] == ["default", "sface+dlib", "1", "2", "deployment", "-"]
        assert [r[:6] for r in rows[2:]] == [
            ["annex", "sface+dlib", "0", "0", "threshold", "0.45"],
            ["lobby", "sface+dlib", "0", "0", "far", "0.01"],
        ]
        code, out, _ = run(capsys, "collections", "list", "--json")
        listed = json.loads(out)
        assert [c["name"] for c in listed] == ["default", "annex", "lobby"]
        assert (listed[0]["subjects"], listed[0]["faces"]) == (1, 2)

        code, out, _ = run(capsys, "collections", "show", "lobby", "--json")
        assert code == 0 and json.loads(out) == listed[2]
        code, out, _ = run(capsys, "collections", "show", "default")
        shown = dict(line.split(None, 1) for line in out.splitlines())
        assert shown["name"] == "default" and shown["subjects"] == "1" and shown["faces"] == "2"
        assert shown["created_at"] == "-"
        code, _, err = run(capsys, "collections", "show", "nothing")
        assert code == 2 and "error: unknown_collection: unknown collection 'nothing'" in err
    finally:
        SubjectStore(aws_client("dynamodb", aws), aws.table).delete_subject("ann")
