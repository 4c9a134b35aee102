"""``facegate prepare``: identity folders in, aligned training chips out, nothing dropped."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import Settings
from facegate.training.prepare import chip_path, prepare, split_identities

LAYOUT = {
    "person_a": ["person_a_1.jpg", "person_a_2.jpg"],
    "person_b": ["person_b_1.jpg", "person_b_2.jpg"],
    "impostor_1": ["impostor_1.jpg"],
    "impostor_2": ["impostor_2.jpg"],
}


@pytest.fixture(scope="module")
def sface() -> FacePipeline:
    """SFace alone: the model whose 112 px ArcFace template ``prepare`` aligns to."""
    return FacePipeline(Settings(model_id="sface"))


@pytest.fixture
def dataset(tmp_path, faces_dir):
    src = tmp_path / "src"
    for identity, names in LAYOUT.items():
        (src / identity).mkdir(parents=True)
        for name in names:
            shutil.copy(faces_dir / name, src / identity / name)
    (src / "person_b" / "broken.jpg").write_bytes(b"not a photo")
    clothes = np.asarray(Image.open(faces_dir / "person_b_1.jpg").convert("RGB"))[650:, :]
    Image.fromarray(clothes).save(src / "person_b" / "clothes.jpg")
    return src


def test_every_photo_is_a_chip_or_a_reject(dataset, tmp_path):
    dst = tmp_path / "out"
    report = prepare(dataset, dst, val_fraction=0.25, progress=False)
    assert (report.photos, report.chips, report.rejects, report.skipped) == (8, 6, 2, 0)
    with open(dst / "rejects.csv", newline="") as handle:
        rejects = {r["photo"]: r["reason"] for r in csv.DictReader(handle)}
    assert rejects == {"person_b/broken.jpg": "invalid_image", "person_b/clothes.jpg": "no_face"}
    for identity, names in LAYOUT.items():
        for name in names:
            with Image.open(dst / "chips" / identity / name.replace(".jpg", ".png")) as chip:
                assert chip.size == (112, 112) and chip.mode == "RGB"
    split = json.loads((dst / "split.json").read_text())
    assert set(split["train"]) | set(split["val"]) == set(LAYOUT)
    assert not set(split["train"]) & set(split["val"]) and len(split["val"]) == 1


def test_chips_are_what_the_serving_pipeline_embeds(dataset, tmp_path, sface):
    """Trained on these chips, a model sees what serving shows it: same alignment."""
    dst = tmp_path / "out"
    prepare(dataset, dst, progress=False)
    for identity, name in (("person_a", "person_a_1.jpg"), ("impostor_2", "impostor_2.jpg")):
        chip = np.asarray(Image.open(chip_path(dst, identity, dataset / identity / name)))
        from_chip = sface.embedder.embed(chip[None])[0]
        served = sface.process(dataset / identity / name, policy="center").primary.vector
        assert float(from_chip @ served) > 0.9999


def test_a_second_run_resumes(dataset, tmp_path):
    dst = tmp_path / "out"
    prepare(dataset, dst, progress=False)
    again = prepare(dataset, dst, progress=False)
    assert (again.skipped, again.chips, again.rejects) == (8, 6, 2)
    missing = chip_path(dst, "person_a", dataset / "person_a" / "person_a_2.jpg")
    missing.unlink()
    third = prepare(dataset, dst, progress=False)
    assert (third.skipped, third.chips) == (7, 6) and missing.is_file()


def _chips(root: Path) -> dict[str, np.ndarray]:
    """Every chip under ``root``, by its path relative to ``root``."""
    return {
        str(path.relative_to(root)): np.asarray(Image.open(path))
        for path in sorted((root / "chips").rglob("*.png"))
    }


def _reasons(root: Path) -> dict[str, str]:
    with open(root / "rejects.csv", newline="") as handle:
        return {r["photo"]: r["reason"] for r in csv.DictReader(handle)}


def test_worker_processes_write_the_same_chips(dataset, tmp_path, sface):
    """Two worker processes in batches of two make what one process makes: the same chip
    files, the same rejects for the same reasons, and chips the model cannot tell apart.

    Not bit-identical: another batch composition moves MTCNN's float rounding by a few
    ulps, which on some CPUs flips a chip pixel by one grey level (a mean difference under
    0.001). A chip of another face differs by about 50 grey levels on average, and one
    aligned 0.1 px off already brings the chips' cosine below 0.9999.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    prepare(dataset, one, progress=False)
    report = prepare(dataset, two, workers=2, batch=2, progress=False)
    assert (report.chips, report.rejects) == (6, 2)
    alone, pooled = _chips(one), _chips(two)
    assert sorted(pooled) == sorted(alone) and len(alone) == 6
    assert not list(two.rglob("*.tmp.png"))
    assert _reasons(two) == _reasons(one)
    assert _reasons(one) == {
        "person_b/broken.jpg": "invalid_image",
        "person_b/clothes.jpg": "no_face",
    }
    names = sorted(alone)
    for name in names:
        assert pooled[name].shape == alone[name].shape == (112, 112, 3), name
        mean_difference = np.abs(pooled[name].astype(np.int16) - alone[name]).mean()
        assert mean_difference < 0.5, (name, mean_difference)
    vectors = sface.embedder.embed(np.stack([alone[n] for n in names]))
    twins = sface.embedder.embed(np.stack([pooled[n] for n in names]))
    cosines = np.einsum("nd,nd->n", vectors, twins)
    assert (cosines > 0.9999).all(), dict(zip(names, cosines.tolist(), strict=True))


def test_split_depends_on_names_and_seed_only():
    names = [f"id{i:03d}" for i in range(100)]
    train, val = split_identities(names, 0.2, seed=3)
    assert len(val) == 20 and not set(train) & set(val)
    assert split_identities(list(reversed(names)), 0.2, seed=3) == (train, val)
    assert split_identities(names, 0.2, seed=4)[1] != val
