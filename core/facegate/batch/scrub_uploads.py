"""Removing one person from uploaded photo sets and their manifests, every version. Torch-free.

A zip photo set (``uploads/<g>/<name>.zip``) and the CSV manifest beside it
(``uploads/<g>/<name>.csv``) hold many people; erasing one rewrites them without that person
(:func:`~facegate.storage.scrub.rewrite_versions`: one new version, every other destroyed).
Whose a member is, is decided by :func:`~facegate.batch.archives.read_archive`, exactly as
ingestion decides it, so erasure removes the photos the gallery got from the set. Here and
not in :mod:`facegate.storage.scrub` because storage may not import batch.

Scrub an archive before its manifest: the archive's plan needs the manifest's rows naming
the person, which the manifest's own rewrite removes.
"""

from __future__ import annotations

import codecs
import csv
import io
import shutil
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence

from facegate.batch.archives import (
    MAX_ARCHIVE_MEMBERS,
    MAX_ARCHIVE_READ,
    ArchivePlan,
    _files,
    _inner_manifest,
    _single_top_folder,
    open_archive,
    parse_archive_manifest,
    read_archive,
)
from facegate.batch.csv_manifest import MAX_MANIFEST_BYTES, decode_manifest, read_manifest
from facegate.common import validate_id
from facegate.errors import ObjectTooLargeError, ValidationError
from facegate.storage.objects import ObjectStore
from facegate.storage.scrub import Scrubbed, rewrite_versions

ARCHIVE_KIND = "archive"
MANIFEST_KIND = "manifest"

#: The largest archive version an erasure reads: it holds the version and the rewritten copy
#: in memory (ingestion reads archives in ranged parts of at most ``MAX_ARCHIVE_READ``; a
#: rewrite cannot). A bigger archive is an :class:`ObjectTooLargeError`, refused before it
#: is downloaded, until rewrites stream through a temporary file.
MAX_REWRITE_BYTES = 4 * MAX_ARCHIVE_READ
#: The most a rewrite decompresses to copy the members it keeps (their declared sizes): a
#: deflate bomb of a few MB would otherwise cost minutes of CPU.
MAX_COPIED_BYTES = 4 * MAX_REWRITE_BYTES

#: Where macOS's zip puts a file's resource fork: ``__MACOSX/<folder>/._<name>``.
_APPLE_DOUBLE = "__MACOSX"
_ZIP64_EXTRA = 0x0001
_COPY_CHUNK = 1024 * 1024
#: What reading a member raises when it is damaged, encrypted or oddly compressed.
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


def rewrite_archive(
    objects: ObjectStore,
    key: str,
    subject_id: str,
    manifest_csv: bytes | None,
    *,
    max_bytes: int = MAX_REWRITE_BYTES,
) -> Scrubbed | None:
    """Remove ``subject_id``'s photos from every version of the photo set at ``key``.

    ``manifest_csv`` is the manifest uploaded beside the archive, as ingestion reads it
    (None when there is none); it decides every version's plan. The live version is
    rewritten without the person (:func:`scrub_archive`), or destroyed with all its versions
    when nothing of anyone else is left. ``rows_removed`` counts the photos removed from the
    live version. Each version read is bounded by ``max_bytes`` (:data:`MAX_REWRITE_BYTES`).
    """
    validate_id(subject_id)

    def scrub(data: bytes) -> tuple[bytes | None, int]:
        return scrub_archive(data, subject_id, manifest_csv)

    return rewrite_versions(objects, key, ARCHIVE_KIND, scrub, max_bytes=max_bytes)


def rewrite_manifest_csv(objects: ObjectStore, key: str, subject_id: str) -> Scrubbed | None:
    """Remove ``subject_id``'s rows from every version of the manifest CSV at ``key``.

    The live version is rewritten without them (:func:`scrub_manifest`), header-only if no
    row is left: the manifest still says its archive is laid out by manifest.
    """
    validate_id(subject_id)

    def scrub(data: bytes) -> tuple[bytes | None, int]:
        return scrub_manifest(data, subject_id)

    return rewrite_versions(objects, key, MANIFEST_KIND, scrub, max_bytes=MAX_MANIFEST_BYTES)


# --------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------


def scrub_archive(
    data: bytes, subject_id: str, manifest_csv: bytes | None = None
) -> tuple[bytes | None, int]:
    """The archive without ``subject_id``'s photos, and how many it had.

    ``(None, 0)`` when the archive holds nothing of the person; ``(b"", n)`` when nothing of
    anyone else would be left (directories, system files and the manifest do not count).

    The person's photos: the members :func:`read_archive` gives them, and the files it
    refused (too large, nested too deep, a bad compression...) that its layout would have
    given them (their folder, or a manifest row naming them): rejects are never embedded
    but are photos of the person all the same. Each one's earlier copies under the same
    name and its macOS resource fork (``__MACOSX/<folder>/._<name>``) go too. Every other
    entry is copied with its name, times, attributes, comment and compression, its bytes
    identical once read; an inner ``manifest.csv`` loses the person's rows
    (:func:`scrub_manifest`; one that cannot be parsed, which ingestion ignores when a
    manifest sits beside the archive, is copied as it is).
    """
    with open_archive(data) as archive:
        plan = read_archive(archive, manifest_csv)
        infos = archive.infolist()
        files = _files(infos)[0]
        top = _single_top_folder([f.filename for f in files])
        inner = _inner_manifest(files, top)
        photos = {path for path, owner in plan.members if owner == subject_id}
        photos |= _rejected_photos(archive, plan, files, top, inner, subject_id, manifest_csv)
        manifests = _scrubbed_manifests(archive, infos, inner, subject_id)
        if not photos and not manifests:
            return None, 0
        dropped = photos | {_resource_fork(path) for path in photos}
        kept = [info for info in infos if info.filename not in dropped]
        others = {f.filename for f in files} - photos - {inner.filename if inner else ""}
        if not others:
            return b"", len(photos)
        return _rewritten(archive, kept, manifests), len(photos)


def _rejected_photos(
    archive: zipfile.ZipFile,
    plan: ArchivePlan,
    files: Sequence[zipfile.ZipInfo],
    top: str | None,
    inner: zipfile.ZipInfo | None,
    subject_id: str,
    manifest_csv: bytes | None,
) -> set[str]:
    """The refused files the plan's layout attributes to ``subject_id``."""
    names = {info.filename for info in archive.infolist() if not info.is_dir()}
    refused = {path for path, _ in plan.rejects if path in names}
    if not refused:
        return set()
    if plan.layout == "folders":
        others = [f.filename for f in files]
        strip = top is not None and any(n.count("/") >= 2 for n in others)
        return {path for path in refused if _folder_of(path, strip) == subject_id}
    text = manifest_csv
    if text is None and inner is not None:
        with archive.open(inner) as member:
            text = member.read(MAX_MANIFEST_BYTES + 1)
    listed = {
        path.removeprefix("./")
        for path, owner in parse_archive_manifest(text or b"", max_rows=MAX_ARCHIVE_MEMBERS)
        if owner == subject_id
    }
    within = {path: path[len(top) + 1 :] if top else path for path in refused}
    return {path for path in refused if path in listed or within[path] in listed}


def _folder_of(path: str, strip: bool) -> str | None:
    """The subject folder of ``path`` in the folders layout (after the single top folder
    when ingestion strips it), None for a file outside any folder."""
    parts = path.split("/")[1:] if strip else path.split("/")
    return parts[0] if len(parts) >= 2 else None


def _resource_fork(path: str) -> str:
    folder, _, name = path.rpartition("/")
    return f"{_APPLE_DOUBLE}/{folder}/._{name}" if folder else f"{_APPLE_DOUBLE}/._{name}"


def _scrubbed_manifests(
    archive: zipfile.ZipFile,
    infos: Iterable[zipfile.ZipInfo],
    inner: zipfile.ZipInfo | None,
    subject_id: str,
) -> dict[int, bytes]:
    """The inner manifest's entries (every copy of its name) that name the person, by
    position in the directory, each without the person's rows."""
    if inner is None:
        return {}
    scrubbed: dict[int, bytes] = {}
    for position, info in enumerate(infos):
        if info.filename != inner.filename:
            continue
        if info.file_size > MAX_MANIFEST_BYTES:
            raise ValidationError("the archive's manifest is larger than a manifest may be")
        try:
            with archive.open(info) as member:
                new = scrub_manifest(member.read(MAX_MANIFEST_BYTES + 1), subject_id)[0]
        except (ValidationError, *_UNREADABLE):
            continue  # unreadable: ingestion could not have used it either
        if new is not None:
            scrubbed[position] = new
    return scrubbed


def _rewritten(
    archive: zipfile.ZipFile, kept: Sequence[zipfile.ZipInfo], replaced: dict[int, bytes]
) -> bytes:
    """A new archive of ``kept`` entries in their order, ``replaced`` ones with new bytes
    (keyed by their position in the original directory)."""
    positions = {id(info): n for n, info in enumerate(archive.infolist())}
    copied = sum(info.file_size for info in kept if positions[id(info)] not in replaced)
    if copied > MAX_COPIED_BYTES:
        raise ObjectTooLargeError(
            f"the archive's remaining members are {copied} bytes uncompressed, "
            f"the limit of a rewrite is {MAX_COPIED_BYTES}"
        )
    sink = io.BytesIO()
    written: set[str] = set()
    with zipfile.ZipFile(sink, "w") as target:
        target.comment = archive.comment
        for info in kept:
            with warnings.catch_warnings():
                if info.filename in written:  # a duplicate name, copied as it was
                    warnings.simplefilter("ignore", UserWarning)
                _copy_entry(archive, info, target, replaced.get(positions[id(info)]))
            written.add(info.filename)
    return sink.getvalue()


def _copy_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: zipfile.ZipFile, data: bytes | None
) -> None:
    """One entry into ``target`` as it was, or with ``data`` instead of its bytes."""
    clone = zipfile.ZipInfo(info.filename, info.date_time)
    clone.compress_type = info.compress_type
    clone.comment = info.comment
    clone.extra = _without_zip64(info.extra)
    clone.create_system = info.create_system
    clone.external_attr = info.external_attr
    clone.internal_attr = info.internal_attr
    if info.flag_bits & 0x1:
        raise ValidationError("the archive has an encrypted member: it cannot be rewritten")
    try:
        if data is not None or info.is_dir():
            target.writestr(clone, data if data is not None else b"")
            return
        clone.file_size = info.file_size
        large = info.file_size > zipfile.ZIP64_LIMIT
        with archive.open(info) as source, target.open(clone, "w", force_zip64=large) as sink:
            shutil.copyfileobj(source, sink, _COPY_CHUNK)
    except _UNREADABLE as exc:
        raise ValidationError(
            "the archive has a damaged or unreadable member: it cannot be rewritten",
            detail=type(exc).__name__,
        ) from exc


def _without_zip64(extra: bytes) -> bytes:
    """The extra field without its zip64 record, which the writer adds back when needed
    (two would make the entry unreadable)."""
    kept, at = [], 0
    while at + 4 <= len(extra):
        header_id, size = struct.unpack_from("<HH", extra, at)
        if header_id != _ZIP64_EXTRA:
            kept.append(extra[at : at + 4 + size])
        at += 4 + size
    return b"".join(kept)


# --------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------


def scrub_manifest(data: bytes, subject_id: str) -> tuple[bytes | None, int]:
    """The ``path,subject_id`` manifest without ``subject_id``'s rows, and how many it had;
    ``(None, 0)`` when no row names the person.

    Parsed as ingestion parses it (:func:`~facegate.batch.csv_manifest.read_manifest`, a
    refused file is a :class:`ValidationError`); every other line is kept as it was
    written (quoting, line endings, blank lines, a BOM), only the person's rows are cut out,
    each with all its physical lines.
    """
    text = decode_manifest(data)
    columns = read_manifest(
        text, required=("path", "subject_id"), max_rows=MAX_ARCHIVE_MEMBERS
    ).columns
    subject_at, width = columns["subject_id"], max(columns.values()) + 1
    lines = io.StringIO(text).readlines()
    reader = csv.reader(io.StringIO(text), strict=True)
    kept: list[str] = []
    removed = start = 0
    header_seen = False
    for row in reader:
        span, start = lines[start : reader.line_num], reader.line_num
        if header_seen and len(row) >= width and row[subject_at].strip() == subject_id:
            removed += 1
        else:
            kept.extend(span)
        header_seen = header_seen or any(cell.strip() for cell in row)
    if not removed:
        return None, 0
    kept.extend(lines[start:])
    bom = codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
    return bom + "".join(kept).encode("utf-8"), removed
