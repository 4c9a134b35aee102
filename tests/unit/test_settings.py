"""Settings come from FACEGATE_* variables, typed and validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from facegate.settings import Settings


def test_environment_overrides_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEGATE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("FACEGATE_MULTI_FACE", "reject")
    monkeypatch.setenv("FACEGATE_FLIP_TTA", "true")
    monkeypatch.setenv("FACEGATE_THRESHOLD", "0.42")
    settings = Settings()
    assert settings.model_dir == Path(tmp_path) and settings.multi_face == "reject"
    assert settings.flip_tta is True and settings.threshold == 0.42


def test_defaults_are_sane(monkeypatch):
    for name in ("FACEGATE_MODEL_ID", "FACEGATE_THRESHOLD", "FACEGATE_FAR", "FACEGATE_MULTI_FACE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.model_id == "sface+dlib" and settings.threshold is None and settings.far is None
    assert settings.max_image_bytes == 15 * 1024 * 1024 and settings.min_image_side == 80


@pytest.mark.parametrize(
    "name,value", [("FACEGATE_MULTI_FACE", "first"), ("FACEGATE_DET_THRESHOLD", "2")]
)
def test_bad_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_empty_endpoint_means_real_aws(monkeypatch):
    monkeypatch.setenv("FACEGATE_AWS_ENDPOINT_URL", "")
    assert Settings().aws_endpoint_url is None


@pytest.mark.parametrize("runtime,batch", [("openvino", 8), ("onnxruntime", 8), ("torch", 32)])
def test_embedding_batch_is_the_runtimes_unless_set(monkeypatch, runtime, batch):
    from facegate.pipeline.runtime import embedding_batch_size

    monkeypatch.delenv("FACEGATE_EMBED_BATCH_SIZE", raising=False)
    monkeypatch.setenv("FACEGATE_RUNTIME", runtime)
    assert embedding_batch_size(Settings()) == batch
    monkeypatch.setenv("FACEGATE_EMBED_BATCH_SIZE", "3")
    assert embedding_batch_size(Settings()) == 3
