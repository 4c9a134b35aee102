"""The fused model (SFace + dlib's ResNet) as one model id, on real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from facegate.errors import ModelNotFoundError
from facegate.models.card import read_card, write_card
from facegate.models.fused import DEFAULT_FUSED_ID, fused_parts, parts_digest
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import Settings, default_model_dir

FACEGATE = Path(sys.executable).parent / "facegate"


def verify(a: Path, b: Path, model: str) -> dict:
    done = subprocess.run(
        [str(FACEGATE), "verify", str(a), str(b), "--model", model, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def fused() -> FacePipeline:
    pipeline = FacePipeline(Settings(model_id=DEFAULT_FUSED_ID))
    pipeline.warm_up()
    return pipeline


def test_fused_card_records_its_parts(fused):
    card = fused.card
    assert card.architecture == "fused" and card.embedding_dim == 256
    parts = {p: read_card(default_model_dir(), p).weights_sha256 for p in card.source["parts"]}
    assert list(parts) == ["sface", "dlib-resnet"]
    assert card.weights_sha256 == parts_digest(parts)
    assert [size for _, size in fused.embedder.inputs] == [112, 150]


def test_fused_similarity_is_the_mean_of_the_parts(faces_dir, fused):
    """Cosine of fused embeddings == mean of the two networks' cosines, pair by pair."""
    photos = sorted(faces_dir.glob("*.jpg"))
    fused_vectors = np.stack([fused.process(p).primary.vector for p in photos])
    assert np.allclose(np.linalg.norm(fused_vectors, axis=1), 1.0, atol=1e-5)
    parts = []
    for model_id in ("sface", "dlib-resnet"):
        pipeline = FacePipeline(Settings(model_id=model_id))
        parts.append(np.stack([pipeline.process(p).primary.vector for p in photos]))
    expected = (parts[0] @ parts[0].T + parts[1] @ parts[1].T) / 2
    assert np.allclose(fused_vectors @ fused_vectors.T, expected, atol=1e-5)
    names = [p.stem for p in photos]
    a1, a2 = names.index("person_a_1"), names.index("person_a_2")
    i1 = names.index("impostor_1")
    threshold = fused.threshold
    assert (fused_vectors @ fused_vectors.T)[a1, a2] >= threshold
    assert (fused_vectors @ fused_vectors.T)[a1, i1] < threshold


def test_cli_verify_serves_each_model_id(faces_dir):
    a, b = faces_dir / "person_b_1.jpg", faces_dir / "person_b_2.jpg"
    answers = {m: verify(a, b, m) for m in ("sface", "dlib-resnet", DEFAULT_FUSED_ID)}
    assert {m: r["model_id"] for m, r in answers.items()} == {m: m for m in answers}
    mean = (answers["sface"]["similarity"] + answers["dlib-resnet"]["similarity"]) / 2
    assert answers[DEFAULT_FUSED_ID]["similarity"] == pytest.approx(mean, abs=1e-4)
    assert all(r["match"] for r in answers.values())


def test_a_fused_card_over_replaced_weights_refuses_to_load(tmp_path):
    """Swapping a part's weights under a fused model must not mix embeddings silently."""
    source = default_model_dir()
    for model_id in ("sface", "dlib-resnet", DEFAULT_FUSED_ID):
        (tmp_path / model_id).symlink_to(source / model_id)
    card = read_card(source, DEFAULT_FUSED_ID)
    assert fused_parts(tmp_path, card) == ["sface", "dlib-resnet"]
    (tmp_path / "sface").unlink()
    (tmp_path / "sface").mkdir()
    write_card(tmp_path, replace(read_card(source, "sface"), weights_sha256="0" * 64))
    with pytest.raises(ModelNotFoundError, match="other weights of 'sface'"):
        fused_parts(tmp_path, card)
