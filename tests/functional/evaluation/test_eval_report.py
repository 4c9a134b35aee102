"""``facegate eval`` reports and ``facegate plot``: files written, numbers that recompute."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegate.evaluation.metrics import decisions_at, eer, kfold_accuracy, roc_auc, tar_at_far
from facegate.evaluation.report import read_scores

FACEGATE = Path(sys.executable).parent / "facegate"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FACEGATE), *map(str, args)], capture_output=True, text=True, timeout=600
    )


def default_card() -> dict:
    """The card of the model the CLI uses when none is named (the settings' default)."""
    from facegate.settings import Settings

    cards = json.loads(run("models", "list", "--json").stdout)
    return next(c for c in cards if c["model_id"] == Settings().model_id)


def lfw_slice(lfw_dev: Path, dest: Path, per: int) -> Path:
    """The first ``per`` same and ``per`` different pairs of every fold of lfw-dev."""
    lines = (lfw_dev / "pairs.txt").read_text().splitlines()
    folds, total = map(int, lines[0].split())
    body, keep = lines[1:], []
    for fold in range(folds):
        block = body[fold * 2 * total : (fold + 1) * 2 * total]
        keep += block[:per] + block[total : total + per]
    dest.write_text("\n".join([f"{folds} {per}", *keep]) + "\n")
    return dest


@pytest.fixture(scope="module")
def lfw_report(tmp_path_factory, lfw_dev) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("eval")
    pairs = lfw_slice(lfw_dev, root / "pairs.txt", per=25)
    out = root / "report"
    done = run("eval", "lfw", "--root", lfw_dev, "--pairs", pairs, "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), out


def test_eval_lfw_writes_the_report_files(lfw_report):
    report, out = lfw_report
    for name in ("report.json", "report.md", "scores.csv"):
        assert (out / name).stat().st_size > 0
    for name in ("roc.png", "histograms.png", "tsne.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        with Image.open(out / name) as png:
            assert min(png.size) >= 400
    assert json.loads((out / "report.json").read_text()) == report
    required = {"accuracy", "accuracy_std", "threshold", "roc_auc", "eer", "tar_at_far"}
    assert required | {"precision", "recall", "f1", "pairs", "no_face"} <= report.keys()
    assert set(report["tar_at_far"]) == {"0.01", "0.001"}
    assert report["pairs"] == 100 and report["genuine_pairs"] == 50 and report["folds"] == 2
    assert report["accuracy"] >= 0.95 and report["roc_auc"] >= 0.98
    markdown = (out / "report.md").read_text()
    assert f"| accuracy | {report['accuracy']:.4f} |" in markdown
    assert "![roc](roc.png)" in markdown and "![tsne](tsne.png)" in markdown


def test_report_numbers_recompute_from_the_saved_scores(lfw_report):
    """Anyone can check the report: every figure follows from scores.csv alone."""
    report, out = lfw_report
    scores, same, folds = read_scores(out / "scores.csv")
    assert len(scores) == report["pairs"]
    result = kfold_accuracy(scores, same, folds)
    assert result.accuracy == pytest.approx(report["accuracy"], abs=1e-12)
    assert result.accuracy_std == pytest.approx(report["accuracy_std"], abs=1e-12)
    assert result.fold_thresholds == pytest.approx(report["fold_thresholds"], abs=1e-9)
    assert np.mean(result.fold_thresholds) == pytest.approx(report["threshold"], abs=1e-9)
    for fold, threshold, accuracy in zip(
        np.unique(folds), report["fold_thresholds"], report["fold_accuracies"], strict=True
    ):
        held_out = folds == fold
        assert np.mean((scores[held_out] >= threshold) == same[held_out]) == accuracy
    at = decisions_at(scores, same, report["threshold"])
    assert at.accuracy == pytest.approx(report["accuracy_at_threshold"])
    assert (at.false_accepts, at.false_rejects) == (
        report["false_accepts"],
        report["false_rejects"],
    )
    predicted = scores >= report["threshold"]
    precision = np.sum(predicted & same) / max(np.sum(predicted), 1)
    recall = np.sum(predicted & same) / np.sum(same)
    assert report["precision"] == pytest.approx(precision)
    assert report["recall"] == pytest.approx(recall)
    assert report["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert report["roc_auc"] == pytest.approx(roc_auc(scores, same))
    assert report["eer"] == pytest.approx(eer(scores, same))
    assert report["tar_at_far"]["0.01"] == pytest.approx(tar_at_far(scores, same, 0.01))


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory, faces_dir) -> Path:
    """The six real photos, a photo with no face in it and a file that is not a photo."""
    root = tmp_path_factory.mktemp("photos")
    for path in faces_dir.glob("*.jpg"):
        shutil.copy(path, root / path.name)
    clothes = np.asarray(Image.open(faces_dir / "person_b_1.jpg").convert("RGB"))[650:, :]
    Image.fromarray(clothes).save(root / "faceless.jpg")
    (root / "broken.jpg").write_bytes(b"not a photo")
    return root


def test_eval_pairs_csv_scores_at_the_card_threshold_and_keeps_failures(photo_set, tmp_path):
    rows = [
        ("person_a_1.jpg", "person_a_2.jpg", 1),
        ("person_b_1.jpg", "person_b_2.jpg", 1),
        ("person_a_1.jpg", "impostor_1.jpg", 0),
        ("person_b_2.jpg", "impostor_2.jpg", 0),
        ("person_a_2.jpg", "person_b_1.jpg", 0),
        ("faceless.jpg", "person_b_1.jpg", 1),
        ("broken.jpg", "person_a_1.jpg", 0),
    ]
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text(
        "path_a,path_b,same,comment\n" + "".join(f"{a},{b},{s},x\n" for a, b, s in rows)
    )
    done = run("eval", "pairs", csv_file, "--root", photo_set, "--out", tmp_path / "r", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    card = default_card()
    assert report["protocol"] == "fixed threshold, untuned"
    assert report["threshold"] == card["threshold"] == report["card_threshold"]
    assert report["pairs"] == 7 and report["images"] == 8
    assert report["no_face"] == 1 and report["no_face_images"] == ["faceless.jpg"]
    assert report["failed"] == 1 and report["failed_images"] == {"broken.jpg": "invalid_image"}
    scores, same, _ = read_scores(tmp_path / "r" / "scores.csv")
    assert scores[-1] == -1.0  # the unreadable photo's pair is a non-match, not dropped
    assert report["false_accepts"] == int(np.sum((scores >= report["threshold"]) & ~same))
    assert report["false_rejects"] == int(np.sum((scores < report["threshold"]) & same))
    assert report["false_accepts"] == 0 and report["false_rejects"] >= 1  # faceless vs b_1

    stricter = run("eval", "pairs", csv_file, "--root", photo_set, "--far", "1e-2", "--json")
    assert json.loads(stricter.stdout)["threshold"] == card["calibration"]["far_thresholds"]["0.01"]


def test_eval_pairs_refuses_a_malformed_csv(photo_set, tmp_path):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("first,second\na.jpg,b.jpg\n")
    done = run("eval", "pairs", csv_file, "--root", photo_set)
    assert done.returncode == 2 and done.stderr.startswith("error: validation_error:")


def test_verify_takes_a_target_far(faces_dir):
    a, b = faces_dir / "person_b_1.jpg", faces_dir / "person_b_2.jpg"
    card = default_card()
    done = run("verify", a, b, "--far", "1e-2", "--json")
    assert done.returncode == 0, done.stderr
    expected = card["calibration"]["far_thresholds"]["0.01"]
    assert json.loads(done.stdout)["threshold"] == pytest.approx(expected, abs=1e-6)
    unknown = run("verify", a, b, "--far", "0.2")
    assert unknown.returncode == 2 and "calibrated FARs: 0.001, 0.01" in unknown.stderr
    both = run("verify", a, b, "--far", "1e-3", "--threshold", "0.4")
    assert both.returncode == 2 and both.stderr.startswith("error: validation_error:")


def test_plot_tsne_of_a_gallery(lfw_dev, tmp_path):
    """A Parquet gallery from ``facegate embed`` drawn as a t-SNE map, one colour each."""
    people = sorted(lfw_dev.iterdir(), key=lambda d: -len(list(d.glob("*.jpg"))))[:3]
    photos = tmp_path / "photos"
    for person in people:
        (photos / person.name).mkdir(parents=True)
        for path in sorted(person.glob("*.jpg"))[:4]:
            (photos / person.name / path.name).symlink_to(path)
    gallery = tmp_path / "gallery.parquet"
    built = run("embed", photos, "--out", gallery)
    assert built.returncode == 0, built.stderr
    done = run("plot", "tsne", gallery, "--out", tmp_path / "map.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "map.png").read_bytes().startswith(PNG_MAGIC)
    too_few = run("plot", "tsne", gallery, "--max-subjects", "1", "--out", tmp_path / "x.png")
    assert too_few.returncode == 2 and "at least 5 embeddings" in too_few.stderr


def test_several_models_in_one_comparison(lfw_dev, tmp_path):
    """Two models on the same pairs: one table, a folder each, one shared ROC plot."""
    pairs = lfw_slice(lfw_dev, tmp_path / "pairs.txt", per=10)
    out = tmp_path / "cmp"
    args = ("eval", "lfw", "--root", lfw_dev, "--pairs", pairs, "--out", out)
    done = run(*args, "--model", "sface", "--model", "dlib-resnet")
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "sface", "dlib-resnet"]
    comparison = json.loads((out / "comparison.json").read_text())
    assert [r["model_id"] for r in comparison["models"]] == ["sface", "dlib-resnet"]
    for report in comparison["models"]:
        folder = out / report["model_id"]
        assert json.loads((folder / "report.json").read_text())["accuracy"] == report["accuracy"]
        scores, same, _ = read_scores(folder / "scores.csv")
        assert report["roc_auc"] == pytest.approx(roc_auc(scores, same))
    assert (out / "roc.png").read_bytes().startswith(PNG_MAGIC)
    assert "| accuracy |" in (out / "comparison.md").read_text()
