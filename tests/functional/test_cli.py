"""The ``facegate`` command as a user runs it: exit codes, one-line errors, real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

FACEGATE = Path(sys.executable).parent / "facegate"
DEFAULT_MODEL, DEFAULT_DIM = "sface+dlib", 256  # the default model: SFace + dlib fused


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FACEGATE), *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, faces_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    good = (faces_dir / "person_b_1.jpg").read_bytes()
    files = {
        "empty": b"",
        "text": b"this is a text file, not a photo\n",
        "corrupt": good[: len(good) // 3],
    }
    out = {name: root / f"{name}.jpg" for name in files}
    for name, data in files.items():
        out[name].write_bytes(data)
    clothes = np.asarray(Image.open(faces_dir / "person_b_1.jpg").convert("RGB"))[650:, :]
    out["faceless"] = root / "faceless.jpg"
    Image.fromarray(clothes).save(out["faceless"])
    out["missing"] = root / "does-not-exist.jpg"
    return out


@pytest.mark.parametrize(
    "a,b,same",
    [
        ("person_a_1", "person_a_2", True),
        ("person_b_1", "person_b_2", True),
        ("person_a_2", "impostor_1", False),
        ("person_b_1", "impostor_2", False),
    ],
)
def test_verify_exit_codes_and_json(faces_dir, a, b, same):
    done = run("verify", faces_dir / f"{a}.jpg", faces_dir / f"{b}.jpg", "--json")
    assert done.returncode == (0 if same else 1), done.stderr
    answer = json.loads(done.stdout)
    assert answer["match"] is same and answer["model_id"] == DEFAULT_MODEL
    assert (answer["similarity"] >= answer["threshold"]) is same


@pytest.mark.parametrize(
    "name,code",
    [
        ("empty", "invalid_image"),
        ("text", "invalid_image"),
        ("corrupt", "invalid_image"),
        ("faceless", "no_face"),
        ("missing", "invalid_image"),
    ],
)
def test_verify_bad_input_exits_2_with_one_line(faces_dir, bad_inputs, name, code):
    done = run("verify", faces_dir / "person_a_1.jpg", bad_inputs[name])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {code}: "), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_embed_then_identify(tmp_path, faces_dir, bad_inputs):
    people = tmp_path / "people"
    for subject, photo in [
        ("person_a", "person_a_1"),
        ("person_b", "person_b_1"),
        ("obama", "impostor_1"),
    ]:
        (people / subject).mkdir(parents=True)
        shutil.copy(faces_dir / f"{photo}.jpg", people / subject / f"{photo}.jpg")
    shutil.copy(bad_inputs["text"], people / "person_a" / "notes.jpg")
    shutil.copy(bad_inputs["faceless"], people / "person_b" / "clothes.jpg")
    shutil.copy(faces_dir / "impostor_2.jpg", people / "loose.jpg")
    gallery = tmp_path / "gallery.parquet"
    done = run("embed", people, "--out", gallery)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(gallery)
    assert sorted(table.column("subject_id").to_pylist()) == ["obama", "person_a", "person_b"]
    embedding = table.schema.field("embedding")
    assert pa.types.is_fixed_size_list(embedding.type) and embedding.type.list_size == DEFAULT_DIM
    assert embedding.type.value_type == pa.float32() and not embedding.nullable
    meta = json.loads(table.schema.metadata[b"facegate"])
    assert (
        meta["model_id"] == DEFAULT_MODEL and meta["dim"] == DEFAULT_DIM and meta["row_count"] == 3
    )
    rejects = pq.read_table(tmp_path / "gallery.rejects.parquet").to_pylist()
    assert {(r["image_key"], r["reason"]) for r in rejects} == {
        ("person_a/notes.jpg", "invalid_image"),
        ("person_b/clothes.jpg", "no_face"),
        ("loose.jpg", "validation_error"),
    }

    hit = run("identify", faces_dir / "person_a_2.jpg", "--gallery", gallery, "--json")
    assert hit.returncode == 0, hit.stderr
    assert json.loads(hit.stdout)["best"]["subject_id"] == "person_a"
    miss = run("identify", faces_dir / "impostor_2.jpg", "--gallery", gallery, "--json")
    assert miss.returncode == 1 and json.loads(miss.stdout)["best"] is None

    other = run("identify", faces_dir / "person_a_2.jpg", "--gallery", gallery, "--model", "nope")
    assert other.returncode == 2 and other.stderr.startswith("error: model_not_found")


def test_models_list_names_sface():
    done = run("models", "list", "--json")
    assert done.returncode == 0
    assert "sface" in [c["model_id"] for c in json.loads(done.stdout)]
