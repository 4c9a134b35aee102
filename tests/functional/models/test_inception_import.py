"""User-supplied InceptionResnetV1 weights: imported from a file or S3, served by model id.

The real VGGFace2/CASIA weights cannot be downloaded here, so these tests use a state dict
of the same architecture with seeded random weights: what is under test is the loading
path (copy, check, hash, card, 160x160 alignment, 512-d output), not the accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facegate.errors import ModelNotFoundError
from facegate.models.card import read_card, sha256_file
from facegate.models.import_weights import import_inception
from facegate.pipeline.face_pipeline import FacePipeline
from facegate.settings import Settings


@pytest.fixture(scope="module")
def state_file(tmp_path_factory):
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vggface2.pt"
    torch.save(InceptionResnetV1(pretrained=None).state_dict(), path)
    return path


def test_import_from_file_and_embed(tmp_path, state_file, faces_dir):
    card = import_inception(str(state_file), tmp_path, "vggface2", threshold=0.4)
    assert card.embedding_dim == 512 and card.template == "arcface_160"
    assert read_card(tmp_path, "vggface2").weights_sha256 == sha256_file(state_file)
    pipeline = FacePipeline(Settings(model_dir=tmp_path, model_id="vggface2"))
    result = pipeline.process(faces_dir / "person_a_1.jpg")
    assert result.primary.vector.shape == (512,)
    assert abs(float(np.linalg.norm(result.primary.vector)) - 1) < 1e-5
    assert result.primary.model_id == "vggface2"
    image = pipeline.decode(faces_dir / "person_a_1.jpg")
    assert pipeline.align(image, result.primary.detection, 0).chip.shape == (160, 160, 3)


def test_import_from_s3(tmp_path, state_file, monkeypatch):
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="weights")
        s3.upload_file(str(state_file), "weights", "models/vggface2.pt")
        card = import_inception("s3://weights/models/vggface2.pt", tmp_path, "vgg", threshold=0.4)
        assert card.weights_sha256 == sha256_file(state_file)
        with pytest.raises(ModelNotFoundError, match="cannot fetch"):
            import_inception("s3://weights/missing.pt", tmp_path, "other", threshold=0.4)


def test_missing_or_wrong_weights_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        import_inception(str(tmp_path / "nope.pt"), tmp_path, "vgg", threshold=0.4)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ModelNotFoundError, match="not an InceptionResnetV1"):
        import_inception(str(wrong), tmp_path / "models", "vgg", threshold=0.4)
    with pytest.raises(ModelNotFoundError) as info:
        FacePipeline(Settings(model_dir=tmp_path, model_id="vgg")).warm_up()
    assert info.value.code == "model_not_found"
