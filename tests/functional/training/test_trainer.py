"""``facegate train`` / ``facegate export`` on a tiny prepared data set of real photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import Settings
from facegate.training.prepare import prepare
from facegate.training.trainer import TrainConfig, Trainer

FACEGATE = Path(sys.executable).parent / "facegate"
PEOPLE = {"person_a": ["person_a_1", "person_a_2"], "person_b": ["person_b_1", "person_b_2"]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, faces_dir) -> Path:
    src = tmp_path_factory.mktemp("src")
    for person, names in PEOPLE.items():
        (src / person).mkdir()
        for name in names:
            shutil.copy(faces_dir / f"{name}.jpg", src / person / f"{name}.jpg")
    dst = tmp_path_factory.mktemp("prepared")
    prepare(src, dst, val_fraction=0.0, progress=False)
    return dst


def _config(prepared: Path, out: Path, **values) -> TrainConfig:
    base = {"data": str(prepared), "out": str(out), "backbone": "sface", "loss": "arcface"}
    base |= {"embedding_dim": 128, "p": 2, "k": 2, "epochs": 1, "max_steps_per_epoch": 2}
    return TrainConfig(**(base | values))


@pytest.mark.parametrize("loss", ["arcface", "distillation"])
def test_resume_continues_with_the_identical_next_step(prepared, tmp_path, loss):
    first = Trainer(_config(prepared, tmp_path / "run", loss=loss, batch_size=4))
    first.train()
    checkpoint = tmp_path / "run" / "last.pt"
    assert checkpoint.is_file()
    first.sampler.set_epoch(first.epoch)
    batch = next(iter(first.sampler))
    expected = first.train_step(batch)

    second = Trainer(_config(prepared, tmp_path / "run", loss=loss, batch_size=4))
    second.load(checkpoint)
    second.sampler.set_epoch(second.epoch)
    assert next(iter(second.sampler)) == batch
    assert second.train_step(batch) == expected


def test_train_and_export_through_the_cli(prepared, tmp_path, faces_dir):
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"data: {prepared}\nout: {tmp_path / 'run'}\nbackbone: sface\nloss: arcface\n"
        "embedding_dim: 128\np: 2\nk: 2\nepochs: 2\nmax_steps_per_epoch: 1\n"
    )
    run = [str(FACEGATE), "train", "--config", str(config), "--set", "lr=0.0001"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and all(r["lr"] >= 0 for r in records)
    logged = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(logged) == 2

    models = tmp_path / "models"
    export = [str(FACEGATE), "export", str(tmp_path / "run" / "last.pt"), "--model-id", "tuned"]
    done = subprocess.run(
        [*export, "--threshold", "0.4", "--model-dir", str(models)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    tuned = FacePipeline(Settings(model_dir=models, model_id="tuned"))
    vector = tuned.process(faces_dir / "person_a_1.jpg").primary.vector
    assert vector.shape == (128,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert tuned.threshold == 0.4 and tuned.card.architecture == "sface"
    # Served on ONNX Runtime (the default) from the graph the export wrote, as the torch
    # module would embed it.
    assert tuned.card.onnx["weights_sha256"] == tuned.card.weights_sha256
    reference = FacePipeline(Settings(model_dir=models, model_id="tuned", runtime="torch"))
    again = reference.process(faces_dir / "person_a_1.jpg").primary.vector
    assert float(vector @ again) > 0.9999

    bad = subprocess.run(
        [str(FACEGATE), "train", "--config", str(config), "--set", "nonsense=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown config key" in bad.stderr
