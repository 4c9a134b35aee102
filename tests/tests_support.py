"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pytest

T = TypeVar("T")

#: Fake credentials for moto: set before any client exists, so nothing can reach a real account.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}

#: Variables that could point a client at a real account or endpoint instead of moto.
REAL_AWS_POINTERS = (
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_S3",
)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def use_fake_credentials(patch: pytest.MonkeyPatch, region: str) -> None:
    """Set moto's fake credentials and ``region`` as the default region."""
    for name, value in FAKE_CREDENTIALS.items():
        patch.setenv(name, value)
    patch.setenv("AWS_DEFAULT_REGION", region)


@dataclass(frozen=True)
class FreshAws:
    """What the ``fresh_aws`` fixture yields: the settings moto answers for, and clients for
    its DynamoDB table and S3 bucket (both created, the bucket unversioned and empty)."""

    settings: Any  # facegate.settings.Settings
    dynamodb: Any
    s3: Any

    @property
    def table(self) -> str:
        return self.settings.table

    @property
    def bucket(self) -> str:
        return self.settings.bucket


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random unit vectors of ``dim`` float32 components, one a row."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def keys_of(table: pa.Table) -> list[tuple[str, str, int]]:
    """A gallery table's rows as ``(subject_id, image_key, face_index)``, in order."""
    return list(
        zip(
            table["subject_id"].to_pylist(),
            table["image_key"].to_pylist(),
            table["face_index"].to_pylist(),
            strict=True,
        )
    )


#: Never imported by a light module: a network runtime (torch, ONNX Runtime or OpenVINO: the
#: pipeline imports them only when it loads its networks) or the torch side of the seam.
HEAVY_MODULES = (
    "torch",
    "onnxruntime",
    "openvino",
    "facegate.models.registry",
    "facegate.models.mtcnn_nets",
    "facegate.models.torch_runner",
)


def run_without_torch(
    code: str, *, block: tuple[str, ...] = ("torch",)
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing any of ``block`` (or a submodule)
    raises ImportError, as in a Lambda without torch. The run exits 3 if any of
    :data:`HEAVY_MODULES` was imported all the same."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if any(name == b or name.startswith(b + '.') for b in {block!r}):\n"
        "            raise ImportError(name + ' is not available here')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"{code}\n"
        f"sys.exit(3 if set({HEAVY_MODULES!r}) & set(sys.modules) else 0)\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def run_on_private_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end on a loop of its own, closed after, leaving the thread's
    current event loop as it was. ``asyncio.run`` would reset the current loop to None, and
    the loop Mangum created and keeps for the thread would then be collected unclosed (a
    ResourceWarning, an error under this suite's ``filterwarnings``)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


#: 16 or more decimal numbers in a row, comma-separated: an embedding or a list of scores.
FLOAT_RUN = re.compile(rb"(?:-?\d*\.\d+(?:[eE][-+]?\d+)?\s*,\s*){15,}-?\d*\.\d+")
#: A photo: JPEG's first bytes, as they are and base64-encoded; PNG's, base64-encoded.
IMAGE_MARKS = (b"\xff\xd8\xff", b"/9j/", b"iVBORw0KGgo")


def biometric_leaks(logged: bytes, subject_ids: Iterable[str]) -> list[str]:
    """The lines of ``logged`` that hold a subject id in clear (as a key's segment too:
    ``enrolments/<subject>/...``), an embedding-like run of floats, or photo bytes, each
    with what it holds; empty when there is none."""
    ids = sorted({s.encode() for s in subject_ids})
    leaks = []
    for line in logged.splitlines():
        found = [i.decode() for i in ids if i in line]
        found += ["floats"] if FLOAT_RUN.search(line) else []
        found += ["image bytes"] if any(mark in line for mark in IMAGE_MARKS) else []
        if found:
            leaks.append(f"{found}: {line[:300].decode(errors='replace')}")
    return leaks


#: The erasure key of tests that build their own Tombstones (any 16+ bytes will do).
TEST_ERASURE_SECRET = "facegate-test-erasure-key-0123456789"


def create_erasure_secret(settings: Any) -> None:
    """The secret ``settings.erasure_key_secret`` names, as the template's ``ErasureKey`` is
    on AWS and the local stack creates it (moto must be running)."""
    from facegate.storage.clients import aws_client

    aws_client("secretsmanager", settings).create_secret(
        Name=settings.erasure_key_secret, SecretString=TEST_ERASURE_SECRET
    )


def erasure_key_for_tests() -> Any:
    """The :class:`ErasureKey` of :data:`TEST_ERASURE_SECRET`."""
    from facegate.storage.tombstones import ErasureKey

    return ErasureKey(TEST_ERASURE_SECRET)


def erasures_in(scope: str, times: dict[str, str]) -> Any:
    """An :class:`Erasures` snapshot holding ``subject_id -> erasure time`` in ``scope``, as
    :meth:`Tombstones.all` would read it back."""
    from facegate.storage.tombstones import Erasures

    key = erasure_key_for_tests()
    return Erasures(key, {key.digest(scope, s): t for s, t in times.items()})


def zip_of(members: dict[str, bytes]) -> bytes:
    """A zip archive of ``name -> bytes`` members, in that order (a photo set)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def drain_queue(sqs: Any, url: str) -> dict[str, Any]:
    """Every message now on the queue, taken off it, as the SQS event Lambda would get
    (message id and body: what the handlers read)."""
    records = []
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for m in got:
            records.append({"messageId": m["MessageId"], "body": m["Body"]})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return {"Records": records}


def clear_app_caches() -> None:
    """The API app's per-process stores, eraser and gallery caches: they hold clients made
    under one moto, so a test module with its own drops them before and after."""
    from app import deps

    for cached in (
        deps._stores,
        deps._eraser,
        deps._gallery_cache,
        deps._gallery_service,
        deps._challenges,
    ):
        cached.cache_clear()


def run_first(target: object, name: str, before: Callable[[], object], *, after: int = 0) -> None:
    """Make ``target.<name>`` run ``before`` once: ahead of its first call when ``after`` is
    0, else right after its ``after``-th call returned (a race made to happen at one point)."""
    real = getattr(target, name)
    calls = 0

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1 and not after:
            before()
        result = real(*args, **kwargs)
        if calls == after:
            before()
        return result

    setattr(target, name, wrapped)
