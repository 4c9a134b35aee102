"""Zip photo sets: which member is whose photo, and which are rejected with a reason. Torch-free."""

from __future__ import annotations

import contextlib
import io
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Literal

from facegate.batch.csv_manifest import MAX_MANIFEST_BYTES, read_manifest
from facegate.common import check_positive, validate_id
from facegate.errors import (
    FaceGateError,
    ImageTooLargeError,
    InvalidImageError,
    StorageError,
    ValidationError,
)
from facegate.storage.keys import is_system_name

#: Rekognition's S3 image limit, as the API's; a bigger member is refused before it is read.
MAX_MEMBER_BYTES = 15 * 1024 * 1024
MAX_ARCHIVE_MEMBERS = 100_000
#: The most one read of an archive may take: its central directory (100,000 entries with long
#: names) or one member's data. An archive read from S3 never needs more in memory at once.
MAX_ARCHIVE_READ = 64 * 1024 * 1024

#: What an archive is read from: its bytes, or a seekable binary file (an ObjectReader).
ArchiveSource = bytes | bytearray | memoryview | IO[bytes] | io.RawIOBase

_MANIFEST_NAME = "manifest.csv"
#: Deflate decompresses in bounded steps; bzip2 and LZMA decompress a whole read at once,
#: so a small compressed block could expand to gigabytes before any size check applies.
_SAFE_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})


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


def open_archive(data: ArchiveSource) -> zipfile.ZipFile:
    """A zip reader over bytes or a seekable binary file; :class:`ValidationError` if corrupt.

    Over a file that fetches byte ranges on demand
    (:class:`~facegate.storage.objects.ObjectReader`) opening reads the archive's end and its
    central directory, and each member read its local header and data: a chunk reads its own
    members without downloading the archive. A fetch that fails raises its own error
    (a :class:`StorageError` stays one, worth a retry).
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
    data: ArchiveSource | zipfile.ZipFile,
    manifest_csv: str | bytes | None = None,
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
    members over ``max_member_bytes`` (:class:`ImageTooLargeError`, from the declared sizes,
    never fetched; :func:`read_member` enforces the limit again), encrypted members,
    compression other than stored/deflate, unsafe paths, duplicate names (the last copy is
    the one a reader gets, earlier ones are rejects). Refused as a whole
    (:class:`ValidationError`): a corrupt archive, more than ``max_members`` entries, an
    unreadable manifest. An open :class:`zipfile.ZipFile` is read and left open, so its
    caller can read members next.
    """
    check_positive(max_member_bytes, "max_member_bytes")
    check_positive(max_members, "max_members")
    with _opened(data) as archive:
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
        rows = parse_archive_manifest(manifest_csv, max_rows=max_members)
        members, more = _manifest_members(names, rows, top, [path for path, _ in rejects])
        layout = "manifest"
    rejects.extend(more)
    return ArchivePlan(
        members=sorted(members),
        rejects=sorted(rejects, key=lambda r: r[0]),
        layout=layout,
    )


@contextlib.contextmanager
def _opened(
    data: ArchiveSource | zipfile.ZipFile,
) -> Iterator[zipfile.ZipFile]:
    if isinstance(data, zipfile.ZipFile):
        yield data
    else:
        with open_archive(data) as archive:
            yield archive


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
        if any(is_system_name(p) for p in parts):
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


def _manifest_text(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The inner manifest's bytes; :func:`parse_archive_manifest` decodes them as any."""
    try:
        return read_member(archive, info.filename, MAX_MANIFEST_BYTES)
    except StorageError:
        raise
    except FaceGateError as exc:
        raise ValidationError(f"the archive's manifest is unusable: {exc.message}") from exc


def _member_problem(info: zipfile.ZipInfo, max_bytes: int) -> FaceGateError | None:
    """Why a member cannot be read safely, judged from its directory entry alone.

    The compressed size is bounded too: it is what reading the member fetches, and no
    member of ``max_bytes`` needs more than :func:`_compressed_bound` of it.
    """
    if info.file_size > max_bytes:
        return ImageTooLargeError(f"{info.file_size} bytes uncompressed, the limit is {max_bytes}")
    if info.compress_size > _compressed_bound(max_bytes):
        return ImageTooLargeError(
            f"{info.compress_size} bytes compressed, more than a member of {max_bytes} needs"
        )
    if info.flag_bits & 0x1:
        return InvalidImageError("encrypted archive member")
    if info.compress_type not in _SAFE_COMPRESSION:
        return InvalidImageError(
            f"unsupported zip compression method {info.compress_type} (use stored or deflate)"
        )
    return None


def _compressed_bound(size: int) -> int:
    """The most bytes deflate needs for ``size`` bytes: incompressible data goes in stored
    blocks of 5 header bytes each (zlib's ``deflateBound`` allows 0.03 %; a generous 1.6 %
    here admits encoders with small blocks)."""
    return size + size // 64 + 1024


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


def parse_archive_manifest(
    text: str | bytes, *, max_rows: int = MAX_ARCHIVE_MEMBERS
) -> list[tuple[str, str]]:
    """``(path, subject_id)`` rows of a CSV with a ``path,subject_id`` header, read by
    :func:`facegate.batch.csv_manifest.read_manifest` (any column order, extra columns
    ignored, blank lines skipped, an Excel BOM tolerated, UTF-16 refused by name).

    A refused file is a :class:`ValidationError`: without its manifest a flat archive has no
    subjects at all. Ids are checked later, per row; a row too short for both columns gives
    ``("", "")``, a reject naming its line.
    """
    table = read_manifest(text, required=("path", "subject_id"), max_rows=max_rows)
    path_at, subject_at = table.columns["path"], table.columns["subject_id"]
    width = max(path_at, subject_at) + 1
    return [(_cell(row, path_at, width), _cell(row, subject_at, width)) for row in table.rows]


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
        found = lookup.get(path.removeprefix("./"))
        if found is None:
            label = path or f"<manifest line {number}>"
            rejects.append((label, ValidationError("listed in the manifest, not in the archive")))
        else:
            subjects.setdefault(found, set()).add(subject)
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

    The declared sizes are checked first (so a member over the limit is never fetched); the
    read is bounded again, since a crafted entry can declare less than it holds. A missing,
    encrypted or damaged member (bad CRC, bad deflate stream) is an :class:`InvalidImageError`,
    a big one an :class:`ImageTooLargeError`: per-photo rejects, like a photo uploaded alone.
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
