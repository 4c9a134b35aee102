"""The front half of batch ingestion: what arrived, what work it means, whether it is done.

Users drop photos and zip archives under ``uploads/<gallery>/`` in the bucket; the bucket's
``ObjectCreated`` notifications reach an SQS queue; an embedding function consumes them and
writes Parquet gallery parts. This module is everything that function does before it needs a
model, so that it can be tested, and run by light functions, without torch:

* :func:`object_refs` turns an S3 event, or an SQS event carrying S3 notifications, into
  :class:`ObjectRef` values (keys URL-decoded, S3's test event ignored).
* :func:`classify` maps a key onto the upload layout (single photo, archive, manifest), or
  says why it is ignored or invalid.
* :func:`read_archive` plans an archive: which member is whose photo, and which members are
  rejected with a reason. Nothing is silently dropped except folders and system files.
* :func:`plan_chunks` splits a large archive into :class:`Chunk` messages that several
  invocations process in parallel, each reading only its own members (:func:`read_member`).
* :class:`IngestLedger` makes processing idempotent: SQS delivers at least once, so the same
  object version (or chunk) may arrive twice, and a retried invocation must not add a second
  copy of its part (:func:`safe_part_name`).

This module must never import torch, directly or indirectly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Literal
from urllib.parse import unquote_plus

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from facegate.aws import aws_client
from facegate.errors import (
    FaceGateError,
    ImageTooLargeError,
    InvalidImageError,
    ValidationError,
)
from facegate.settings import Settings
from facegate.stores import _aws_errors, _error_code, validate_id

#: Everything users upload lives under this prefix; anything else in the bucket (gallery
#: parts, enrolment photos) is ignored, so that our own writes can never trigger ingestion.
UPLOADS_PREFIX = "uploads/"
#: Rekognition's S3 image limit, as the API's; a bigger member is refused before it is read.
MAX_MEMBER_BYTES = 15 * 1024 * 1024
MAX_ARCHIVE_MEMBERS = 100_000
#: A manifest of 100 000 rows of long unicode paths stays well below this.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: The ``type`` of our own chunk messages on the queue.
CHUNK_MESSAGE_TYPE = "facegate.archive_chunk"
CHUNK_MESSAGE_VERSION = 1
#: SQS refuses bodies over 256 KiB; keep room for the envelope and message attributes.
MAX_CHUNK_MESSAGE_BYTES = 240_000
DEFAULT_LEASE_SECONDS = 900

_MANIFEST_NAME = "manifest.csv"
_SYSTEM_FILES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
#: Deflate decompresses in bounded steps; bzip2 and LZMA decompress a whole read at once,
#: so a small compressed block could expand to gigabytes before any size check applies.
_SAFE_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_INGEST_PK = "INGEST#"
_META_SK = "META"
_SOURCE_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_IN_PROGRESS = "in_progress"
_COMPLETED = "completed"


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    """One uploaded object version, as its notification names it.

    ``key`` is decoded (notifications URL-encode it). ``etag`` carries no quotes.
    ``version_id`` is None in an unversioned bucket; the ``"null"`` version of a bucket whose
    versioning is suspended is None too, since it is overwritten in place like an
    unversioned object and only its ``etag`` tells two uploads apart.
    """

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    size: int


def object_refs(event: Mapping[str, Any]) -> list[ObjectRef]:
    """The created objects an S3 event, or an SQS event of S3 notifications, is about.

    Accepted: S3's direct Lambda event; an SQS event whose bodies are S3 notifications, also
    when they went through SNS first. Skipped: S3's ``s3:TestEvent`` (sent once when the
    notification is configured), records other than ``ObjectCreated:*`` (a delete must
    never trigger embedding), and our own chunk messages (:func:`is_chunk_message`: the
    caller dispatches those to :meth:`Chunk.from_message`). Anything else is a
    :class:`ValidationError`: a poison message that no retry will fix. To fail single
    messages of an SQS batch instead of the whole batch, call it per record:
    ``object_refs({"Records": [record]})``.
    """
    if not isinstance(event, Mapping):
        raise ValidationError("an event must be a JSON object")
    if _is_test_event(event):
        return []
    refs: list[ObjectRef] = []
    for record in _records(event):
        if "s3" in record:
            refs.extend(_s3_record_refs(record))
        elif "body" in record:
            refs.extend(_message_refs(record["body"]))
        else:
            raise ValidationError("record is neither an S3 notification nor an SQS message")
    return refs


def _is_test_event(doc: Mapping[str, Any]) -> bool:
    return doc.get("Event") == "s3:TestEvent"


def _records(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    records = doc.get("Records")
    if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
        raise ValidationError("not an S3 or SQS event: no list of Records")
    return records


def _message_refs(body: Any) -> list[ObjectRef]:
    """An SQS body: an S3 notification, an SNS envelope around one, or our chunk message."""
    if not isinstance(body, str):
        raise ValidationError("SQS message body must be a string")
    if is_chunk_message(body):
        return []
    doc = _json_object(body, "SQS message body")
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        doc = _json_object(doc["Message"], "SNS message")
    if _is_test_event(doc):
        return []
    refs: list[ObjectRef] = []
    for record in _records(doc):
        if "s3" not in record:
            raise ValidationError("SQS message carries a record that is not an S3 notification")
        refs.extend(_s3_record_refs(record))
    return refs


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"{what} is not JSON", detail=text[:200]) from exc
    if not isinstance(doc, dict):
        raise ValidationError(f"{what} is not a JSON object", detail=text[:200])
    return doc


def _s3_record_refs(record: Mapping[str, Any]) -> list[ObjectRef]:
    if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
        return []
    try:
        s3 = record["s3"]
        obj = s3["object"]
        bucket = s3["bucket"]["name"]
        key = unquote_plus(obj["key"])
        size = int(obj.get("size", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError("malformed S3 notification record", detail=repr(record)) from exc
    if not isinstance(bucket, str) or not bucket or not key:
        raise ValidationError("S3 notification without bucket or key", detail=repr(record))
    version = _text(obj.get("versionId"))
    return [
        ObjectRef(
            bucket=bucket,
            key=key,
            version_id=None if version == "null" else version,
            etag=_text(obj.get("eTag")),
            size=size,
        )
    ]


def _text(value: Any) -> str | None:
    """A notification's optional string, unquoted (ETags sometimes come quoted); "" is None."""
    return value.strip('"') or None if isinstance(value, str) else None


# --------------------------------------------------------------------------------------
# Upload layout
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoUpload:
    """``uploads/<gallery>/<subject_id>/<filename>``: one photo of one subject."""

    gallery: str
    subject_id: str
    filename: str


@dataclass(frozen=True)
class ArchiveUpload:
    """``uploads/<gallery>/<name>.zip``: many photos, laid out as :func:`read_archive` says."""

    gallery: str
    name: str

    @property
    def manifest_key(self) -> str:
        """Where a manifest beside the archive lives (upload it before the archive)."""
        return f"{UPLOADS_PREFIX}{self.gallery}/{self.name}.csv"


@dataclass(frozen=True)
class ManifestUpload:
    """``uploads/<gallery>/<name>.csv``: the manifest of ``<name>.zip``; it triggers nothing.

    The archive's notification reads it, so it must be uploaded before the archive.
    """

    gallery: str
    name: str


@dataclass(frozen=True)
class IgnoredKey:
    """Not an upload at all (outside ``uploads/``, a folder marker, a system file): skip it."""

    reason: str


@dataclass(frozen=True)
class InvalidUpload:
    """An upload that breaks the layout or names an invalid id: a reject, not an exception.

    ``gallery`` is set when the gallery id itself was valid, so that the caller can record
    the reject in that gallery's rejects table.
    """

    key: str
    error: FaceGateError = field(compare=False)
    gallery: str | None = None


Upload = PhotoUpload | ArchiveUpload | ManifestUpload | IgnoredKey | InvalidUpload


def _is_system_name(part: str) -> bool:
    """Hidden files, macOS resource forks and Windows thumbnails are never photos."""
    return part.startswith(".") or part in _SYSTEM_FILES


def classify(key: str) -> Upload:
    """What an object key means under the upload layout; never raises for a bad key.

    Under ``uploads/<gallery>/`` a file is a photo in a ``<subject_id>/`` folder, a ``.zip``
    archive or a ``.csv`` manifest (case-insensitive extensions). A file in the wrong place
    under a valid gallery (loose beside the archives, or nested too deep) is an
    :class:`InvalidUpload` rather than ignored: the user meant it as an upload, so it must
    show up as a reject with its reason, not vanish.
    """
    if not key.startswith(UPLOADS_PREFIX):
        return IgnoredKey(f"not under {UPLOADS_PREFIX}")
    if key.endswith("/"):
        return IgnoredKey("a folder marker, not a file")
    parts = key[len(UPLOADS_PREFIX) :].split("/")
    if any(_is_system_name(p) for p in parts):
        return IgnoredKey("a hidden or system file")
    if len(parts) < 2:
        return IgnoredKey(f"directly under {UPLOADS_PREFIX}, outside any gallery folder")
    gallery = parts[0]
    try:
        validate_id(gallery, "gallery")
    except ValidationError as exc:
        return InvalidUpload(key, exc)
    if len(parts) == 2:
        return _gallery_file(key, gallery, parts[1])
    if len(parts) == 3:
        try:
            subject_id = validate_id(parts[1])
        except ValidationError as exc:
            return InvalidUpload(key, exc, gallery)
        return PhotoUpload(gallery, subject_id, parts[2])
    return InvalidUpload(
        key,
        ValidationError("nested too deep: photos go in uploads/<gallery>/<subject_id>/<photo>"),
        gallery,
    )


def _gallery_file(key: str, gallery: str, filename: str) -> Upload:
    stem, dot, extension = filename.rpartition(".")
    if dot and stem and extension.lower() == "zip":
        return ArchiveUpload(gallery, stem)
    if dot and stem and extension.lower() == "csv":
        return ManifestUpload(gallery, stem)
    return InvalidUpload(
        key,
        ValidationError(
            "not inside a <subject_id>/ folder: photos go in "
            "uploads/<gallery>/<subject_id>/<photo>, archives in uploads/<gallery>/<name>.zip"
        ),
        gallery,
    )


# --------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------


@dataclass
class ArchivePlan:
    """Which archive member is whose photo, and which members were refused and why.

    Both lists are sorted by member path, so that planning the same archive twice gives the
    same chunks (and so the same idempotency ids). ``layout`` says how subjects were found.
    """

    members: list[tuple[str, str]] = field(default_factory=list)
    rejects: list[tuple[str, FaceGateError]] = field(default_factory=list)
    layout: Literal["folders", "manifest"] = "folders"


def open_archive(data: bytes | bytearray | memoryview | IO[bytes]) -> zipfile.ZipFile:
    """A zip reader over bytes or a seekable binary file; :class:`ValidationError` if corrupt.

    A file-like object that fetches byte ranges on demand (e.g. over S3 ``GetObject`` with
    ``Range``) lets a chunk read its own members without downloading the whole archive.
    """
    source = io.BytesIO(bytes(data)) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise ValidationError(
            "not a readable zip archive (corrupt, truncated or another format)",
            detail=str(exc),
        ) from exc


def read_archive(
    data: bytes | bytearray | memoryview | IO[bytes],
    manifest_csv: str | None = None,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_members: int = MAX_ARCHIVE_MEMBERS,
) -> ArchivePlan:
    """Plan an archive from its central directory: no photo is decompressed, only a manifest.

    Two layouts. Folders: ``<subject_id>/<photo>``, optionally all under one top folder
    (``<name>/<subject_id>/<photo>``, what zipping a folder produces). Manifest: a CSV with a
    ``path,subject_id`` header, either ``manifest.csv`` inside the archive (at its root or in
    its single top folder) or ``manifest_csv``, the one uploaded beside it, which wins when
    both exist. With a manifest it alone decides: a file it does not list is a reject, and so
    is a row naming no member. Manifest paths may omit the single top folder.

    Folders and system files (hidden, ``__MACOSX``) are skipped. Refused as rejects:
    members over ``max_member_bytes`` (:class:`ImageTooLargeError`, from the declared size,
    which :func:`read_member` enforces again), encrypted members, compression other than
    stored/deflate, unsafe paths, duplicate names (the last copy is the one a reader gets,
    earlier ones are rejects). Refused as a whole (:class:`ValidationError`): a corrupt
    archive, more than ``max_members`` entries, an unreadable manifest.
    """
    _check_positive(max_member_bytes, "max_member_bytes")
    _check_positive(max_members, "max_members")
    with open_archive(data) as archive:
        infos = archive.infolist()
        if len(infos) > max_members:
            raise ValidationError(
                f"the archive has {len(infos)} entries, more than the limit of {max_members}"
            )
        entries, rejects = _files(infos)
        top = _single_top_folder([e.filename for e in entries])
        inner = _inner_manifest(entries, top)
        if inner is not None:
            entries.remove(inner)
            if manifest_csv is None:
                manifest_csv = _manifest_text(archive, inner)
    names: list[str] = []
    for info in entries:
        problem = _member_problem(info, max_member_bytes)
        if problem is None:
            names.append(info.filename)
        else:
            rejects.append((info.filename, problem))
    if manifest_csv is None:
        members, more = _folder_members(names, top)
        layout: Literal["folders", "manifest"] = "folders"
    else:
        rows = parse_manifest(manifest_csv, max_rows=max_members)
        members, more = _manifest_members(names, rows, top, [path for path, _ in rejects])
        layout = "manifest"
    rejects.extend(more)
    return ArchivePlan(
        members=sorted(members),
        rejects=sorted(rejects, key=lambda r: r[0]),
        layout=layout,
    )


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{name} must be a positive int, got {value!r}")


def _files(
    infos: Iterable[zipfile.ZipInfo],
) -> tuple[list[zipfile.ZipInfo], list[tuple[str, FaceGateError]]]:
    """The archive's files worth a look, and rejects for unsafe paths and shadowed duplicates."""
    rejects: list[tuple[str, FaceGateError]] = []
    latest: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        parts = info.filename.split("/")
        if info.is_dir():
            continue
        if any(p in ("", ".", "..") for p in parts):
            rejects.append((info.filename, ValidationError("unsafe member path")))
            continue
        if any(_is_system_name(p) for p in parts):
            continue
        if info.filename in latest:
            rejects.append(
                (info.filename, ValidationError("a later entry of the archive has the same name"))
            )
        latest[info.filename] = info
    return list(latest.values()), rejects


def _single_top_folder(names: Sequence[str]) -> str | None:
    """The folder every file sits in, if there is exactly one (a zipped folder)."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return tops.pop()
    return None


def _inner_manifest(entries: Sequence[zipfile.ZipInfo], top: str | None) -> zipfile.ZipInfo | None:
    wanted = {_MANIFEST_NAME} | ({f"{top}/{_MANIFEST_NAME}"} if top else set())
    return next((e for e in entries if e.filename in wanted), None)


def _manifest_text(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    try:
        raw = read_member(archive, info.filename, MAX_MANIFEST_BYTES)
    except FaceGateError as exc:
        raise ValidationError(f"the archive's manifest is unusable: {exc.message}") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError("the archive's manifest is not UTF-8 text") from exc


def _member_problem(info: zipfile.ZipInfo, max_bytes: int) -> FaceGateError | None:
    """Why a member cannot be read safely, judged from its directory entry alone."""
    if info.file_size > max_bytes:
        return ImageTooLargeError(f"{info.file_size} bytes uncompressed, the limit is {max_bytes}")
    if info.flag_bits & 0x1:
        return InvalidImageError("encrypted archive member")
    if info.compress_type not in _SAFE_COMPRESSION:
        return InvalidImageError(
            f"unsupported zip compression method {info.compress_type} (use stored or deflate)"
        )
    return None


def _subject_reject(name: str, subject: str) -> tuple[str, FaceGateError] | None:
    try:
        validate_id(subject)
    except ValidationError as exc:
        return name, exc
    return None


def _folder_members(
    names: Sequence[str], top: str | None
) -> tuple[list[tuple[str, str]], list[tuple[str, FaceGateError]]]:
    """``<subject>/<photo>``; the single top folder is stripped only if something is nested
    under it, so that an archive of one subject's folder keeps that folder as the subject."""
    strip = top is not None and any(n.count("/") >= 2 for n in names)
    members: list[tuple[str, str]] = []
    rejects: list[tuple[str, FaceGateError]] = []
    for name in names:
        parts = name.split("/")[1:] if strip else name.split("/")
        if len(parts) == 1:
            rejects.append(
                (name, ValidationError("not inside a <subject_id>/ folder, and no manifest"))
            )
        elif len(parts) > 2:
            rejects.append(
                (name, ValidationError("nested too deep: expected <subject_id>/<photo>"))
            )
        elif (reject := _subject_reject(name, parts[0])) is not None:
            rejects.append(reject)
        else:
            members.append((name, parts[0]))
    return members, rejects


def parse_manifest(text: str, *, max_rows: int = MAX_ARCHIVE_MEMBERS) -> list[tuple[str, str]]:
    """``(path, subject_id)`` rows of a CSV with a ``path,subject_id`` header (any column
    order, extra columns ignored, blank lines skipped, an Excel BOM tolerated).

    A missing header or a malformed file is a :class:`ValidationError`: without its manifest
    a flat archive has no subjects at all. Ids are checked later, per row.
    """
    if len(text) > MAX_MANIFEST_BYTES:
        raise ValidationError(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff")), strict=True))
    except csv.Error as exc:
        raise ValidationError(f"the manifest is not valid CSV: {exc}") from exc
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "path" not in header or "subject_id" not in header:
        raise ValidationError("the manifest needs a header row with path and subject_id columns")
    if len(rows) - 1 > max_rows:
        raise ValidationError(f"the manifest has more than {max_rows} rows")
    path_at, subject_at = header.index("path"), header.index("subject_id")
    width = max(path_at, subject_at) + 1
    return [(_cell(row, path_at, width), _cell(row, subject_at, width)) for row in rows[1:]]


def _cell(row: Sequence[str], index: int, width: int) -> str:
    return row[index].strip() if len(row) >= width else ""


def _manifest_members(
    names: Sequence[str],
    rows: Sequence[tuple[str, str]],
    top: str | None,
    refused: Sequence[str],
) -> tuple[list[tuple[str, str]], list[tuple[str, FaceGateError]]]:
    """Members named by manifest rows (by full path, or path within the single top folder).

    Rows naming a ``refused`` member (already a reject for its own reason) are passed over.
    """
    everything = [*names, *refused]
    lookup = {n: n for n in everything}
    if top is not None:
        for name in everything:
            lookup.setdefault(name[len(top) + 1 :], name)
    subjects: dict[str, set[str]] = {}
    rejects: list[tuple[str, FaceGateError]] = []
    for number, (path, subject) in enumerate(rows, start=2):
        name = lookup.get(path.removeprefix("./"))
        if name is None:
            label = path or f"<manifest line {number}>"
            rejects.append((label, ValidationError("listed in the manifest, not in the archive")))
        else:
            subjects.setdefault(name, set()).add(subject)
    members: list[tuple[str, str]] = []
    for name in names:
        listed = sorted(subjects.get(name, ()))
        if not listed:
            rejects.append((name, ValidationError("not listed in the manifest: no subject")))
        elif len(listed) > 1:
            rejects.append((name, ValidationError(f"listed with different subjects {listed}")))
        elif (reject := _subject_reject(name, listed[0])) is not None:
            rejects.append(reject)
        else:
            members.append((name, listed[0]))
    return members, rejects


def read_member(archive: zipfile.ZipFile, name: str, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """One member's bytes, never more than ``max_bytes`` in memory whatever its header says.

    The declared size is checked first; the read is bounded again, since a crafted entry can
    declare less than it holds. A missing, encrypted or damaged member (bad CRC, bad deflate
    stream) is an :class:`InvalidImageError`, a big one an :class:`ImageTooLargeError`:
    per-photo rejects, like a photo uploaded alone.
    """
    try:
        info = archive.getinfo(name)
    except KeyError as exc:
        raise InvalidImageError(f"no member {name!r} in the archive") from exc
    problem = _member_problem(info, max_bytes)
    if problem is not None:
        raise problem
    try:
        with archive.open(info) as member:
            data = member.read(max_bytes + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError) as exc:
        raise InvalidImageError(f"damaged archive member {name!r}", detail=str(exc)) from exc
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"archive member {name!r} has more than {max_bytes} bytes")
    return data


# --------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A slice of an archive's members, sent to the queue for one embedding invocation.

    ``index`` counts from 0 to ``count - 1``. The object version is pinned (``version_id``,
    else ``etag``), so a chunk never reads members of an archive replaced meanwhile.
    """

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    gallery: str
    members: tuple[tuple[str, str], ...]
    index: int
    count: int
    size: int = 0

    def __post_init__(self) -> None:
        validate_id(self.gallery, "gallery")
        if not isinstance(self.bucket, str) or not self.bucket or not isinstance(self.key, str):
            raise ValidationError("a chunk needs a bucket and a key")
        numbers = (self.index, self.count, self.size)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers):
            raise ValidationError("chunk index, count and size must be ints")
        if not 0 <= self.index < self.count or self.size < 0:
            raise ValidationError(f"chunk index {self.index} out of range for {self.count}")
        if not self.members:
            raise ValidationError("a chunk needs at least one member")
        for member in self.members:
            if (
                not isinstance(member, tuple)
                or len(member) != 2
                or not isinstance(member[0], str)
                or not member[0]
            ):
                raise ValidationError("chunk members must be (path, subject_id) pairs")
            validate_id(member[1])

    @property
    def ref(self) -> ObjectRef:
        """The archive version this chunk reads, for :meth:`IngestLedger.source_id`."""
        return ObjectRef(self.bucket, self.key, self.version_id, self.etag, self.size)

    @property
    def member_range(self) -> str:
        """Names this chunk's members for idempotency: its position and a digest of them,
        so that re-planning with another chunk size can never match an old claim."""
        digest = hashlib.sha256(_compact(self.members).encode("ascii")).hexdigest()
        return f"{self.index + 1}/{self.count}:{digest[:32]}"

    def to_message(self) -> str:
        """The SQS body: compact ASCII JSON (SQS refuses some control characters)."""
        return _compact(
            {
                "type": CHUNK_MESSAGE_TYPE,
                "version": CHUNK_MESSAGE_VERSION,
                "bucket": self.bucket,
                "key": self.key,
                "version_id": self.version_id,
                "etag": self.etag,
                "size": self.size,
                "gallery": self.gallery,
                "index": self.index,
                "count": self.count,
                "members": [list(m) for m in self.members],
            }
        )

    @classmethod
    def from_message(cls, body: str) -> Chunk:
        """Inverse of :meth:`to_message`; :class:`ValidationError` for anything else."""
        doc = _json_object(body, "chunk message")
        if doc.get("type") != CHUNK_MESSAGE_TYPE or doc.get("version") != CHUNK_MESSAGE_VERSION:
            raise ValidationError("not a facegate chunk message of a known version")
        members = doc.get("members")
        if not isinstance(members, list) or not all(
            isinstance(m, list) and len(m) == 2 for m in members
        ):
            raise ValidationError("chunk message members must be [path, subject_id] pairs")
        try:
            return cls(
                bucket=doc["bucket"],
                key=doc["key"],
                version_id=_optional_str(doc.get("version_id")),
                etag=_optional_str(doc.get("etag")),
                gallery=doc["gallery"],
                members=tuple((m[0], m[1]) for m in members),
                index=doc["index"],
                count=doc["count"],
                size=doc.get("size", 0),
            )
        except (KeyError, TypeError) as exc:
            raise ValidationError("chunk message is missing a field", detail=str(exc)) from exc


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValidationError("chunk message version_id and etag must be strings or null")


def is_chunk_message(body: str) -> bool:
    """Whether an SQS body is one of our chunk messages rather than an S3 notification."""
    if not isinstance(body, str) or CHUNK_MESSAGE_TYPE not in body:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("type") == CHUNK_MESSAGE_TYPE


def plan_chunks(ref: ObjectRef, gallery: str, plan: ArchivePlan, chunk_size: int) -> list[Chunk]:
    """Split the plan's members, in order, into chunks of at most ``chunk_size`` members.

    A chunk is also closed early when its message would pass
    :data:`MAX_CHUNK_MESSAGE_BYTES` (long unicode paths). The split depends only on the plan
    and ``chunk_size``, so a redelivered archive yields the same chunks. No members, no chunks
    (the caller still records the plan's rejects).
    """
    _check_positive(chunk_size, "chunk_size")
    validate_id(gallery, "gallery")
    groups = _pack(plan.members, chunk_size, _envelope_bytes(ref, gallery))
    return [
        Chunk(
            bucket=ref.bucket,
            key=ref.key,
            version_id=ref.version_id,
            etag=ref.etag,
            gallery=gallery,
            members=tuple(group),
            index=index,
            count=len(groups),
            size=ref.size,
        )
        for index, group in enumerate(groups)
    ]


def _envelope_bytes(ref: ObjectRef, gallery: str) -> int:
    """A message's size without members, with room for any index and count."""
    probe = Chunk(ref.bucket, ref.key, ref.version_id, ref.etag, gallery, (("x", "x"),), 0, 1)
    return len(probe.to_message()) + 64


def _pack(
    members: Sequence[tuple[str, str]], chunk_size: int, envelope: int
) -> list[list[tuple[str, str]]]:
    groups: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    used = envelope
    for member in members:
        cost = len(_compact(list(member))) + 1
        if current and (len(current) >= chunk_size or used + cost > MAX_CHUNK_MESSAGE_BYTES):
            groups.append(current)
            current, used = [], envelope
        if used + cost > MAX_CHUNK_MESSAGE_BYTES:
            raise ValidationError(f"archive member path too long for a queue message: {member[0]}")
        current.append(member)
        used += cost
    if current:
        groups.append(current)
    return groups


# --------------------------------------------------------------------------------------
# Idempotency
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger knows of one source: ``status`` is ``in_progress`` or ``completed``."""

    source_id: str
    status: str
    attempts: int
    lease_until: float | None
    outputs: tuple[str, ...]


def safe_part_name(source_id: str) -> str:
    """The deterministic stem of a source's output files: a retried invocation overwrites its
    own part instead of adding a second copy of the same rows.

    Only the stem (``part-<source_id>``): the caller adds the extension, so that a gallery
    part and its rejects file can share it.
    """
    return f"part-{_check_source_id(source_id)}"


def _check_source_id(source_id: Any) -> str:
    if not isinstance(source_id, str) or not _SOURCE_ID_RE.match(source_id):
        raise ValidationError("a source id is 64 lowercase hex characters", detail=repr(source_id))
    return source_id


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class IngestLedger:
    """Who is processing which source, and what it wrote: one item per source
    (``pk=INGEST#<source_id>``, ``sk=META``) in the subjects table.

    The items carry neither ``kind`` nor ``subject_id``, so they stay out of the ``subjects``
    index and out of every subject query. A claim is a lease: a worker that dies without
    releasing (Lambda timeout) blocks redeliveries only until the lease expires, so the
    lease must exceed the function's timeout.
    """

    def __init__(self, client: BaseClient, table: str) -> None:
        self._db = client
        self.table = table

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLedger:
        return cls(aws_client("dynamodb", settings), settings.table)

    @staticmethod
    def source_id(ref: ObjectRef, member_range: str = "") -> str:
        """sha256 of bucket, key, version (the version id, else the etag) and member range.

        The same object version delivered twice gets the same id; a new version gets a new
        one. In an unversioned bucket, re-uploading identical bytes (same etag) counts as a
        duplicate, which is what it is. Without a version id or an etag nothing tells two
        uploads apart: :class:`ValidationError`.
        """
        if ref.version_id:
            version = f"version:{ref.version_id}"
        elif ref.etag:
            version = f"etag:{ref.etag}"
        else:
            raise ValidationError(f"s3://{ref.bucket}/{ref.key} has neither version id nor etag")
        text = _compact([ref.bucket, ref.key, version, member_range])
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def _key(self, source_id: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": _INGEST_PK + _check_source_id(source_id)}, "sk": {"S": _META_SK}}

    def claim(
        self,
        source_id: str,
        now: float | None = None,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
    ) -> bool:
        """Take the source for processing; False if it is completed or claimed by a live lease.

        One conditional write: it succeeds if there is no item, or if the item is an
        ``in_progress`` claim whose lease has run out (its worker died). ``now`` is epoch
        seconds (default: the clock). ``attempts`` counts successful claims, to spot a poison
        source that kills every worker.
        """
        _check_positive(lease_seconds, "lease_seconds")
        now = time.time() if now is None else float(now)
        with _aws_errors(f"claiming ingest source {source_id}"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=self._key(source_id),
                    UpdateExpression=(
                        "SET #source = :source, #status = :in_progress, #claimed = :claimed, "
                        "#lease = :lease ADD #attempts :one"
                    ),
                    ConditionExpression=(
                        "attribute_not_exists(pk) OR (#status = :in_progress AND #lease <= :now)"
                    ),
                    ExpressionAttributeNames={
                        "#source": "source_id",
                        "#status": "status",
                        "#claimed": "claimed_at",
                        "#lease": "lease_until",
                        "#attempts": "attempts",
                    },
                    ExpressionAttributeValues={
                        ":source": {"S": source_id},
                        ":in_progress": {"S": _IN_PROGRESS},
                        ":claimed": {"S": _iso(now)},
                        ":lease": {"N": repr(now + lease_seconds)},
                        ":now": {"N": repr(now)},
                        ":one": {"N": "1"},
                    },
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                return False
        return True

    def complete(self, source_id: str, outputs: Sequence[str], now: float | None = None) -> None:
        """Mark the source done with the keys it wrote; later claims of it return False.

        Unconditional: the outputs exist whoever holds the claim now, and since part names
        are deterministic a second worker of the same source wrote the same keys.
        """
        if isinstance(outputs, str) or not all(isinstance(o, str) and o for o in outputs):
            raise ValidationError("outputs must be a list of non-empty keys")
        now = time.time() if now is None else float(now)
        with _aws_errors(f"completing ingest source {source_id}"):
            self._db.update_item(
                TableName=self.table,
                Key=self._key(source_id),
                UpdateExpression=(
                    "SET #source = :source, #status = :completed, #outputs = :outputs, "
                    "#completed = :completed_at REMOVE #lease"
                ),
                ExpressionAttributeNames={
                    "#source": "source_id",
                    "#status": "status",
                    "#outputs": "outputs",
                    "#completed": "completed_at",
                    "#lease": "lease_until",
                },
                ExpressionAttributeValues={
                    ":source": {"S": source_id},
                    ":completed": {"S": _COMPLETED},
                    ":outputs": {"L": [{"S": o} for o in outputs]},
                    ":completed_at": {"S": _iso(now)},
                },
            )

    def release(self, source_id: str) -> bool:
        """Drop an ``in_progress`` claim after a failure, so that the retry can run at once.

        A completed source is never released (a late, failing worker must not erase another's
        success): False then, and when there was no claim.
        """
        with _aws_errors(f"releasing ingest source {source_id}"):
            try:
                self._db.delete_item(
                    TableName=self.table,
                    Key=self._key(source_id),
                    ConditionExpression="#status = :in_progress",
                    ExpressionAttributeNames={"#status": "status"},
                    ExpressionAttributeValues={":in_progress": {"S": _IN_PROGRESS}},
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                return False
        return True

    def get(self, source_id: str) -> LedgerEntry | None:
        """The source's entry (strongly consistent), or None if never claimed or released."""
        with _aws_errors(f"reading ingest source {source_id}"):
            item = self._db.get_item(
                TableName=self.table, Key=self._key(source_id), ConsistentRead=True
            ).get("Item")
        if item is None:
            return None
        lease = item.get("lease_until")
        return LedgerEntry(
            source_id=source_id,
            status=item["status"]["S"],
            attempts=int(item.get("attempts", {}).get("N", "0")),
            lease_until=float(lease["N"]) if lease else None,
            outputs=tuple(o["S"] for o in item.get("outputs", {}).get("L", [])),
        )
