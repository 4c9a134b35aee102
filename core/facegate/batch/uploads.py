"""``facegate upload``: put a photo set where the embedding job picks it up. Torch-free.

A folder (``<subject_id>/<photo>`` inside) is zipped on the fly, a zip or a single photo is
uploaded as it is. Keys follow the layout ``facegate.ingest.classify`` reads:
``uploads/<gallery>/<name>.zip`` or ``uploads/<gallery>/<subject_id>/<file>``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from facegate.common import validate_id
from facegate.errors import ValidationError
from facegate.storage.keys import UPLOADS_PREFIX


def zip_folder(folder: Path) -> bytes:
    """The folder's files, paths relative to it (hidden files left out)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and not any(p.startswith(".") for p in rel.parts):
                archive.write(path, rel.as_posix())
    return buffer.getvalue()


def upload(
    s3: Any, bucket: str, path: Path, gallery: str, subject_id: str | None = None
) -> tuple[str, int]:
    """Upload ``path`` for ``gallery``; returns ``(key, bytes)``."""
    validate_id(gallery, "gallery")
    if path.is_dir():
        key, body = f"{UPLOADS_PREFIX}{gallery}/{path.name}.zip", zip_folder(path)
    elif path.suffix.lower() == ".zip":
        key, body = f"{UPLOADS_PREFIX}{gallery}/{path.name}", path.read_bytes()
    elif path.is_file():
        if subject_id is None:
            raise ValidationError("a single photo needs --subject")
        key = f"{UPLOADS_PREFIX}{gallery}/{validate_id(subject_id)}/{path.name}"
        body = path.read_bytes()
    else:
        raise ValidationError(f"{path} does not exist")
    s3.put_object(Bucket=bucket, Key=key, Body=body, ServerSideEncryption="AES256")
    return key, len(body)
