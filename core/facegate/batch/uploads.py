"""``facegate upload``: put a photo set where the embedding job picks it up. Torch-free.

A folder (``<subject_id>/<photo>`` inside) is zipped on the fly, a zip or a single photo is
uploaded as it is. Keys are the upload layout of :mod:`facegate.storage.keys`, the one
:func:`~facegate.storage.keys.classify` reads back: ``uploads/<gallery>/<name>.zip`` or
``uploads/<gallery>/<subject_id>/<file>``. Writes go through
:class:`~facegate.storage.objects.ObjectStore`: encrypted (they are photos of people) and typed.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from facegate.common import validate_id
from facegate.errors import ValidationError
from facegate.pipeline.image import content_type
from facegate.storage.keys import archive_upload_key, photo_upload_key
from facegate.storage.objects import ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ZIP_TYPE = "application/zip"


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
    s3: S3Client, bucket: str, path: Path, gallery: str, subject_id: str | None = None
) -> tuple[str, int]:
    """Upload ``path`` for ``gallery``; returns ``(key, bytes)``.

    A photo's content type is read from its bytes (``application/octet-stream`` when it is
    no image: the embedding job records it as a reject, so the user sees why).
    """
    validate_id(gallery, "gallery")
    if path.is_dir():
        key, body, kind = archive_upload_key(gallery, path.name), zip_folder(path), ZIP_TYPE
    elif path.is_file() and path.suffix.lower() == ".zip":
        key, body, kind = archive_upload_key(gallery, path.stem), path.read_bytes(), ZIP_TYPE
    elif path.is_file():
        if subject_id is None:
            raise ValidationError("a single photo needs --subject")
        key = photo_upload_key(gallery, subject_id, path.name)
        body = path.read_bytes()
        kind = content_type(body)
    else:
        raise ValidationError(f"{path} does not exist")
    ObjectStore(s3, bucket).put(key, body, content_type=kind)
    return key, len(body)
