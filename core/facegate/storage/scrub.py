"""Removing one person from S3 objects, every version of them. Torch-free.

The bucket is versioned, so a delete or an overwrite only hides what a person's photos and
rows were: the old versions still hold them. Erasure therefore destroys versions for good
(:meth:`~facegate.storage.objects.ObjectStore.delete_versions`), and where an object holds
other people too (a gallery part, a photo set, a manifest) writes one new version without
the person and then destroys every other version of the key.

These are primitives: what to scan, tombstones and the receipt are the erasure's business
(it builds the receipt from :class:`Scrubbed` counts). The zip and CSV scrubbers, which
decide whose a member is as ingestion does, live in :mod:`facegate.batch.scrub_uploads`
(storage may not import batch).

Races: a key is listed once, and only the version ids of that listing are ever destroyed,
never the version written here nor one written by someone else since. Those appear in
:attr:`Scrubbed.versions_unread`: they may hold the person, so an erasure that sees any
scrubs the key again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar, cast

from facegate.errors import ObjectNotFoundError, StorageError, ValidationError
from facegate.gallery.format import METADATA_KEY, gallery_meta_from_schema
from facegate.lazy import lazy_module
from facegate.storage.objects import ObjectInfo, ObjectStore, StoredObject

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
else:
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")
    pq = lazy_module("pyarrow.parquet")

if TYPE_CHECKING:
    from typing import TypeAlias

    #: One boolean a row: which rows of a table to drop (Arrow arrays subscript only in stubs).
    _Mask: TypeAlias = pa.Array[pa.BooleanScalar] | pa.ChunkedArray[pa.BooleanScalar]

#: User metadata of every version this module writes (``x-amz-meta-facegate-erasure``). A
#: rewritten upload notifies ingestion like any upload; ingestion reads this to skip it
#: (its rows are already in the gallery, minus the person's) instead of ingesting it again.
ERASURE_METADATA_KEY = "facegate-erasure"
REWRITTEN = "rewritten"
ERASURE_METADATA: Mapping[str, str] = MappingProxyType({ERASURE_METADATA_KEY: REWRITTEN})

#: The content type of a rewrite whose original had none (S3's own default).
_DEFAULT_TYPE = "binary/octet-stream"
#: Listing then reading the current version disagree only while someone writes the key.
_SNAPSHOT_TRIES = 3

_T = TypeVar("_T")

#: What a scrub makes of one version: the version without the person (None: the version
#: does not hold the person, nothing to do), and how many rows or members it dropped.
Scrub = Callable[[bytes], tuple[bytes | None, int]]


@dataclass(frozen=True)
class Scrubbed:
    """What one primitive removed from one key (or prefix), for the erasure's receipt.

    ``versions_deleted``: object versions and delete markers destroyed for good.
    ``rows_removed``: table rows, CSV rows or zip members dropped from the live (current)
    version, or, for a prefix, the distinct keys destroyed: what the person had in the live
    data; older versions are destroyed whole and not counted twice. ``rewritten``: a new
    current version without the person was written. ``versions_unread``: versions that
    appeared after the listing (someone else's writes), left as they are; scrub again.

    ``key`` may name the person (``uploads/<g>/<subject_id>/``): a receipt, never a log line.
    """

    key: str
    kind: str
    versions_deleted: int
    rows_removed: int
    rewritten: bool
    versions_unread: int = 0

    def to_dict(self) -> dict[str, str | int | bool]:
        return asdict(self)


def is_rewritten_by_erasure(info: ObjectInfo) -> bool:
    """Whether this version (:meth:`ObjectStore.head` of the notified version id) was
    written by an erasure (:data:`ERASURE_METADATA`), not uploaded."""
    return info.metadata.get(ERASURE_METADATA_KEY) == REWRITTEN


# --------------------------------------------------------------------------------------
# Whole prefixes
# --------------------------------------------------------------------------------------


def erase_prefix(objects: ObjectStore, prefix: str, kind: str) -> Scrubbed | None:
    """Destroy every version and delete marker under ``prefix``; None if nothing was there.

    For objects that hold only the person (``uploads/<g>/<subject_id>/`` photos). The
    prefix must end with ``/`` (so ``al/`` never reaches ``alice/``) and have at least two
    folders, so that no mistake can erase a whole top-level prefix such as ``uploads/``.
    """
    _check_kind(kind)
    folders = prefix.split("/")[:-1] if isinstance(prefix, str) else []
    if (
        not isinstance(prefix, str)
        or not prefix.endswith("/")
        or len(folders) < 2
        or not all(folders)
    ):
        raise ValidationError("an erased prefix is at least two folders and ends with '/'")
    targets = objects.versions(prefix)
    if not targets:
        return None
    objects.delete_versions(targets)
    listed = set(targets)
    unread = [t for t in objects.versions(prefix) if t not in listed]
    return Scrubbed(
        key=prefix,
        kind=kind,
        versions_deleted=len(targets),
        rows_removed=len({key for key, _ in targets}),
        rewritten=False,
        versions_unread=len(unread),
    )


# --------------------------------------------------------------------------------------
# One key, rewritten
# --------------------------------------------------------------------------------------


def rewrite_versions(
    objects: ObjectStore,
    key: str,
    kind: str,
    scrub: Scrub,
    write: Callable[[bytes], ObjectInfo | None] | None = None,
    *,
    max_bytes: int | None = None,
) -> Scrubbed | None:
    """Remove the person from every version of exactly ``key``.

    ``scrub(body)`` gives ``(new_body, rows_removed)``, ``new_body`` None when the version
    does not hold the person, ``b""`` when nothing would be left (the key is then destroyed,
    every version, and nothing written). No version holding the person: None, nothing
    touched. Otherwise the scrubbed current version is written as the new current one
    (through ``write``, which returns its put answer or None; else :meth:`ObjectStore.put`
    with the original content type and :data:`ERASURE_METADATA`, not the original's user
    metadata, which might name the person), and every listed version but that one is
    destroyed. A current version that does not hold the person is kept as it is.

    The current version is read first and, when it holds the person, older versions are not
    read at all: they are destroyed whatever they hold. Each read is bounded by
    ``max_bytes`` (:class:`~facegate.errors.ObjectTooLargeError`). If the key got a new
    current version after the listing, nothing is written over it (that would hide someone
    else's upload behind an older copy): the listed versions are destroyed and the new one
    is counted in ``versions_unread``.
    """

    def write_bytes(body: bytes, current: StoredObject) -> ObjectInfo | None:
        if write is not None:
            return write(body)
        return objects.put(
            key,
            body,
            content_type=current.content_type or _DEFAULT_TYPE,
            metadata=ERASURE_METADATA,
        )

    return _rewrite(objects, key, kind, scrub, write_bytes, lambda body: body == b"", max_bytes)


def rewrite_table(
    objects: ObjectStore,
    key: str,
    kind: str,
    drop: Callable[[pa.Table], _Mask],
    write_table: Callable[[pa.Table], ObjectInfo | None],
    *,
    max_bytes: int | None = None,
) -> Scrubbed | None:
    """:func:`rewrite_versions` for a Parquet table (gallery part, gallery, rejects).

    ``drop(table)`` is a boolean mask of the rows to remove (null counts as keep).
    ``write_table`` is the caller's validating writer
    (:meth:`~facegate.storage.galleries.GalleryStore.write_table`), so a rewrite is held to
    the rules of any other write. The schema metadata is kept; a gallery table's footer
    (:data:`~facegate.gallery.format.METADATA_KEY`) gets its new ``row_count``, since the
    format refuses a table whose count disagrees. A table left without rows is still
    written (an empty part or rejects table is valid); whether to remove it is the
    caller's decision.
    """

    def scrub(body: bytes) -> tuple[pa.Table | None, int]:
        return drop_rows(_read_parquet(objects, key, body), drop)

    def write(table: pa.Table, _current: StoredObject) -> ObjectInfo | None:
        return write_table(table)

    return _rewrite(objects, key, kind, scrub, write, lambda _table: False, max_bytes)


def drop_rows(
    table: pa.Table,
    drop: Callable[[pa.Table], _Mask],
) -> tuple[pa.Table | None, int]:
    """``table`` without the rows ``drop`` selects, and how many; ``(None, 0)`` if none."""
    mask = drop(table)
    if len(mask) != table.num_rows or not pa.types.is_boolean(mask.type):
        raise ValidationError(f"a drop mask is {table.num_rows} booleans, one a row")
    keep = cast("_Mask", pc.invert(pc.fill_null(mask, pa.scalar(False))))  # an array in, one out
    kept = table.filter(keep)
    removed = table.num_rows - kept.num_rows
    if not removed:
        return None, 0
    metadata = dict(table.schema.metadata or {})
    if METADATA_KEY in metadata:
        meta = replace(gallery_meta_from_schema(table.schema), row_count=kept.num_rows)
        metadata.update(meta.to_schema_metadata())
    return kept.replace_schema_metadata(metadata or None), removed


def _rewrite(
    objects: ObjectStore,
    key: str,
    kind: str,
    scrub: Callable[[bytes], tuple[_T | None, int]],
    write: Callable[[_T, StoredObject], ObjectInfo | None],
    is_gone: Callable[[_T], bool],
    max_bytes: int | None,
) -> Scrubbed | None:
    """The versioned rewrite of :func:`rewrite_versions`, for any scrubbed value: bytes, or a
    table that the caller's writer serialises."""
    _check_kind(kind)
    listed, current = _snapshot(objects, key, max_bytes)
    live, rows = scrub(current.body) if current is not None else (None, 0)
    skip = _version(current) if current is not None else None
    if live is None and not _older_holds(objects, key, listed, skip, scrub, max_bytes):
        return None
    keep: set[str] = set()
    rewritten = False
    if current is not None and live is None:
        keep.add(_version(current))  # the live object never held the person
    elif (
        current is not None
        and live is not None
        and not is_gone(live)
        and _still_current(objects, key, current)
    ):
        answer = write(live, current)
        # Without the put answer, the current version now is ours (or, in the instant since,
        # someone else's: kept too, never destroyed unread).
        written = _version(answer) if answer is not None else _current_version(objects, key)
        keep.add(written or "null")
        rewritten = True
    targets = [(key, v) for v in listed if v not in keep]
    objects.delete_versions(targets)
    unread = [v for v in _listed(objects, key) if v not in keep and v not in listed]
    return Scrubbed(
        key=key,
        kind=kind,
        versions_deleted=len(targets),
        rows_removed=rows,
        rewritten=rewritten,
        versions_unread=len(unread),
    )


def _snapshot(
    objects: ObjectStore, key: str, max_bytes: int | None
) -> tuple[list[str], StoredObject | None]:
    """The key's version ids and its current version (None: a delete marker), agreeing: a
    current version missing from the listing was written in between, so list again."""
    for _ in range(_SNAPSHOT_TRIES):
        listed = _listed(objects, key)
        if not listed:
            return [], None
        try:
            current = objects.get(key, max_bytes=max_bytes)
        except ObjectNotFoundError:
            return listed, None
        if _version(current) in listed:
            return listed, current
    raise StorageError(f"{objects.uri(key)} kept changing while it was listed")


def _older_holds(
    objects: ObjectStore,
    key: str,
    listed: list[str],
    skip: str | None,
    scrub: Callable[[bytes], tuple[_T | None, int]],
    max_bytes: int | None,
) -> bool:
    """Whether a listed version other than ``skip`` holds the person; delete markers (and
    versions destroyed since the listing) read as missing and hold no one."""
    for version in listed:
        if version == skip:
            continue
        try:
            found = objects.get(key, version_id=version, max_bytes=max_bytes)
        except ObjectNotFoundError:
            continue
        if scrub(found.body)[0] is not None:
            return True
    return False


def _listed(objects: ObjectStore, key: str) -> list[str]:
    """Version ids (delete markers too) of exactly ``key``, not of keys it is a prefix of."""
    return [version for found, version in objects.versions(key) if found == key]


def _still_current(objects: ObjectStore, key: str, current: StoredObject) -> bool:
    """Whether ``current`` is still the key's current version: a rewrite of it must not
    land over a newer upload."""
    return _current_version(objects, key) == _version(current)


def _current_version(objects: ObjectStore, key: str) -> str | None:
    """The current version's id; None when the key is gone or its current is a marker."""
    try:
        return _version(objects.head(key))
    except ObjectNotFoundError:
        return None


def _version(info: ObjectInfo) -> str:
    """The id as listings spell it: ``"null"`` for the unversioned version."""
    return info.version_id or "null"


def _read_parquet(objects: ObjectStore, key: str, body: bytes) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(body))
    except pa.ArrowException as exc:
        raise ValidationError(f"not a Parquet file: {objects.uri(key)}") from exc


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not kind:
        raise ValidationError("a scrubbed kind is a non-empty string")
