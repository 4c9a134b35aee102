"""Registering user-supplied weights (InceptionResnetV1 VGGFace2/CASIA) under a model id.

facenet-pytorch downloads these weights from the internet on demand; FaceGate never does.
A user who has the file points ``facegate models import`` at a local path or an ``s3://``
URI; the file is copied into the model directory once, checked by loading it into the
architecture, hashed, and given a card. Serving then reads only local files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from facegate.errors import ModelNotFoundError, StorageError
from facegate.models.card import ModelCard, write_card

INCEPTION_DIM = 512


def fetch_weights(uri: str, dest: Path) -> Path:
    """Copy a local file or download an ``s3://bucket/key`` object to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith("s3://"):
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = uri[5:].partition("/")
        if not bucket or not key:
            raise ModelNotFoundError(f"{uri} is not an s3://bucket/key URI")
        with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            try:
                boto3.client("s3").download_fileobj(bucket, key, tmp)
            except ClientError as exc:
                Path(tmp.name).unlink()
                raise ModelNotFoundError(f"cannot fetch {uri}: {exc}") from exc
            except BotoCoreError as exc:
                Path(tmp.name).unlink()
                raise StorageError(f"cannot reach S3 for {uri}: {exc}") from exc
        Path(tmp.name).replace(dest)
        return dest
    source = Path(uri)
    if not source.is_file():
        raise ModelNotFoundError(f"weights file {source} does not exist")
    shutil.copyfile(source, dest)
    return dest


def import_inception(
    uri: str, model_dir: Path, model_id: str, *, threshold: float, version: str = "user"
) -> ModelCard:
    """Install InceptionResnetV1 weights (a torch state dict) as ``model_id``, with the ONNX
    graphs that serve it."""
    from facegate.models.registry import BUILDERS, load_state

    target = model_dir / model_id
    weights = fetch_weights(uri, target / "model.pt")
    try:
        BUILDERS["inception_resnet_v1"](load_state(weights))
    except (RuntimeError, KeyError, ValueError) as exc:
        weights.unlink()
        raise ModelNotFoundError(f"{uri} is not an InceptionResnetV1 state dict: {exc}") from exc
    card = ModelCard.for_weights(
        weights,
        model_id=model_id,
        version=version,
        architecture="inception_resnet_v1",
        embedding_dim=INCEPTION_DIM,
        threshold=threshold,
        source={"uri": uri},
        calibration={"status": "user-supplied threshold; run 'facegate calibrate' to measure"},
        license="see the weights' own terms (facenet-pytorch: MIT code, VGGFace2 data terms)",
    )
    write_card(model_dir, card)
    from facegate.models.assets import ensure_servable

    return ensure_servable(model_dir, card)
