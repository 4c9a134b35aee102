"""Every S3 key layout FaceGate reads or writes, in one place. Torch-free.

The bucket, top-level prefix by prefix::

    uploads/<gallery>/<subject_id>/<photo>     a photo upload (notifies the embedding job)
    uploads/<gallery>/<name>.zip               a photo set upload (idem)
    uploads/<gallery>/<name>.csv               the photo set's manifest (read, never notifies)
    galleries/<gallery>/parts/<part>.parquet   gallery rows: one part per ingest batch or
                                               re-embedding chunk; the source of truth
    galleries/<gallery>/rejects/<part>.parquet the photos that part could not use
    galleries/<gallery>/gallery.parquet        the compacted gallery that searches read
    enrolments/<subject_id>/<face_id>.<ext>    enrolment photos (private to the service)
    probes/<any key>                           photos requests may name as s3:// URIs
    jobs/<job_id>/manifest.csv                 a verification job (probe photos beside it)
    results/<job_id>/...                       its chunk results, results and summary
    reembed/<target>.json                      the state of a re-embedding into ``target``
    erasures/<erasure_id>.json                 an erasure run as a job: its state, then its
                                               receipt (names the person's keys; expires
                                               with jobs)

Every id in a key is checked by :func:`~facegate.common.validate_id` (no ``/``, no ``..``),
so one gallery, subject or job never lists or overwrites another's objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from facegate.common import ID_PATTERN, check_index, validate_id
from facegate.errors import (
    FaceGateError,
    ValidationError,
)

JOBS_PREFIX = "jobs/"
RESULTS_PREFIX = "results/"
MANIFEST_NAME = "manifest.csv"
GALLERY_PREFIX = "galleries/"
#: Private to the service: :meth:`PhotoStore.fetch` refuses caller URIs under it.
ENROLMENT_PREFIX = "enrolments/"
#: The collection of every subject enrolled through the routes that name none.
DEFAULT_COLLECTION = "default"
#: Outside ``galleries/``, which holds only Parquet tables.
REEMBED_PREFIX = "reembed/"
#: ``exports/<gallery>.json``: which collection a gallery was exported from (its lineage, for
#: erasure), written before the export reads a subject.
EXPORTS_PREFIX = "exports/"
ERASURES_PREFIX = "erasures/"
#: The only prefix an API request may name as ``s3://<bucket>/<key>``
#: (:meth:`PhotoStore.fetch`): every other prefix holds photos of enrolled or gallery
#: subjects, which a key that may verify must not turn into embeddings.
PROBES_PREFIX = "probes/"
_SOURCE_ID_RE = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------
# Galleries
# --------------------------------------------------------------------------------------


def gallery_prefix(gallery: str) -> str:
    """``galleries/<g>/``: names are ids (no ``/``), so one gallery never lists another's."""
    return f"{GALLERY_PREFIX}{validate_id(gallery, 'gallery')}/"


def parts_prefix(gallery: str) -> str:
    return f"{gallery_prefix(gallery)}parts/"


def rejects_prefix(gallery: str) -> str:
    return f"{gallery_prefix(gallery)}rejects/"


def part_key(gallery: str, part: str) -> str:
    """``galleries/<g>/parts/<part>.parquet``; ``part`` is the writer's deterministic name."""
    return f"{parts_prefix(gallery)}{validate_id(part, 'part')}.parquet"


def rejects_key(gallery: str, part: str) -> str:
    """``galleries/<g>/rejects/<part>.parquet``: the rejects of the part of the same name."""
    return f"{rejects_prefix(gallery)}{validate_id(part, 'part')}.parquet"


def gallery_key(gallery: str) -> str:
    """``galleries/<g>/gallery.parquet``: the compacted gallery."""
    return f"{gallery_prefix(gallery)}gallery.parquet"


def delta_key(gallery: str) -> str:
    """``galleries/<g>/delta.parquet``: the gallery's newer generation, the rows merged since
    ``gallery.parquet`` was last rewritten; served on top of it while its footer names that
    generation (:mod:`facegate.gallery.generations`)."""
    return f"{gallery_prefix(gallery)}delta.parquet"


def is_part_key(key: str) -> bool:
    """Whether ``key`` is a gallery part's (``galleries/<g>/parts/<name>.parquet``)."""
    head, sep, name = key.rpartition("/parts/")
    return (
        bool(sep)
        and head.startswith(GALLERY_PREFIX)
        and "/" not in head.removeprefix(GALLERY_PREFIX)
        and name.endswith(".parquet")
        and "/" not in name
    )


def inbox_prefix(gallery: str) -> str:
    """``galleries/<g>/inbox/``: one empty marker per part written since the last
    compaction, so a compaction finds what is new without listing every part."""
    return f"{gallery_prefix(gallery)}inbox/"


def inbox_key(part: str) -> str:
    """The inbox marker of the part at key ``part`` (``galleries/<g>/parts/<name>.parquet``
    -> ``galleries/<g>/inbox/<name>``); the part key itself for anything else is refused."""
    if not is_part_key(part):
        raise ValidationError(f"not a gallery part key: {part!r}")
    head, _, name = part.rpartition("/parts/")
    return f"{head}/inbox/{name.removesuffix('.parquet')}"


def part_of_marker(marker: str) -> str:
    """The part key an inbox marker stands for (the inverse of :func:`inbox_key`)."""
    head, sep, name = marker.rpartition("/inbox/")
    if not sep or not name:
        raise ValidationError(f"not an inbox marker: {marker!r}")
    return f"{head}/parts/{name}.parquet"


def compaction_state_key(gallery: str) -> str:
    """``galleries/<g>/compaction.json``: the generations the last compaction wrote, so the
    next one knows whether it may only merge what is new."""
    return f"{gallery_prefix(gallery)}compaction.json"


def ann_prefix(gallery: str) -> str:
    """``galleries/<g>/ann/``: the ANN index objects and their manifest (one erasure task
    removes them all)."""
    return f"{gallery_prefix(gallery)}ann/"


def ann_manifest_key(gallery: str) -> str:
    """``galleries/<g>/ann/manifest.json``: which index serves which ``gallery.parquet``."""
    return f"{ann_prefix(gallery)}manifest.json"


def check_source_id(source_id: Any) -> str:
    """An ingest source id (see :meth:`IngestLedger.source_id`): 64 lowercase hex digits."""
    if not isinstance(source_id, str) or not _SOURCE_ID_RE.match(source_id):
        raise ValidationError("a source id is 64 lowercase hex characters", detail=repr(source_id))
    return source_id


def safe_part_name(source_id: str) -> str:
    """The deterministic part name of an ingest source: a retried invocation overwrites its
    own part instead of adding a second copy of the same rows.

    Only the stem (``part-<source_id>``): :func:`part_key` and :func:`rejects_key` add the
    extension, so that a gallery part and its rejects file share it.
    """
    return f"part-{check_source_id(source_id)}"


# --------------------------------------------------------------------------------------
# Enrolment photos and re-embedding state
# --------------------------------------------------------------------------------------


def collection_prefix(collection: str = DEFAULT_COLLECTION) -> str:
    """``enrolments/<collection>/``: every enrolment photo of one collection."""
    return f"{ENROLMENT_PREFIX}{validate_id(collection, 'collection')}/"


def subject_prefix(subject_id: str, collection: str = DEFAULT_COLLECTION) -> str:
    """``enrolments/<collection>/<subject_id>/``: the trailing slash keeps ``al`` from
    matching ``alice``."""
    return f"{collection_prefix(collection)}{validate_id(subject_id)}/"


def enrolment_photo_key(
    subject_id: str, face_id: str, extension: str, collection: str = DEFAULT_COLLECTION
) -> str:
    """``enrolments/<collection>/<subject_id>/<face_id>.<extension>``."""
    prefix = subject_prefix(subject_id, collection)
    return f"{prefix}{validate_id(face_id, 'face_id')}.{extension}"


def legacy_subject_prefix(subject_id: str) -> str:
    """``enrolments/<subject_id>/``: where photos lay before collections (what
    :mod:`facegate.storage.migrate` moves into the default collection)."""
    return f"{ENROLMENT_PREFIX}{validate_id(subject_id)}/"


def export_lineage_key(gallery: str) -> str:
    """``exports/<gallery>.json``."""
    return f"{EXPORTS_PREFIX}{validate_id(gallery, 'gallery')}.json"


def erasure_status_key(erasure_id: str) -> str:
    """``erasures/<erasure_id>.json``: ``queued`` (by the API), then the receipt or error."""
    return f"{ERASURES_PREFIX}{validate_id(erasure_id, 'erasure_id')}.json"


def erasure_work_prefix(erasure_id: str) -> str:
    """``erasures/<erasure_id>/``: a fanned-out erasure's plan, its chunks' partial receipts
    (``chunks/<n>.json``) and done markers (``done/<n>``); deleted once the receipt is kept."""
    return f"{ERASURES_PREFIX}{validate_id(erasure_id, 'erasure_id')}/"


def reembed_status_key(target: str) -> str:
    """``reembed/<target>.json``: ``queued`` (by the API), then the job's report or error."""
    return f"{REEMBED_PREFIX}{validate_id(target, 'gallery')}.json"


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------


def job_prefix(job_id: str) -> str:
    """``jobs/<job_id>/``: the job folder, which relative probe paths are resolved in."""
    return f"{JOBS_PREFIX}{validate_id(job_id, 'job_id')}/"


def manifest_key(job_id: str) -> str:
    return job_prefix(job_id) + MANIFEST_NAME


def job_id_from_manifest_key(key: Any) -> str | None:
    """The job id of ``jobs/<job_id>/manifest.csv``; None for any other key.

    Probe photos uploaded into the job folder notify too: they must be ignored, not start a
    job, so anything but the manifest itself (with a valid id) is None rather than an error.
    """
    if not isinstance(key, str):
        return None
    parts = key.split("/")
    if len(parts) != 3 or parts[0] + "/" != JOBS_PREFIX or parts[2] != MANIFEST_NAME:
        return None
    return parts[1] if ID_PATTERN.match(parts[1]) else None


def results_prefix(job_id: str) -> str:
    return f"{RESULTS_PREFIX}{validate_id(job_id, 'job_id')}/"


def results_key(job_id: str) -> str:
    return results_prefix(job_id) + "results.parquet"


def summary_key(job_id: str) -> str:
    return results_prefix(job_id) + "summary.json"


def chunks_prefix(job_id: str) -> str:
    """``results/<job_id>/chunks/``: the chunk tables (and manifest failures) aggregation reads."""
    return f"{results_prefix(job_id)}chunks/"


def chunk_result_key(job_id: str, index: int) -> str:
    """``results/<job_id>/chunks/<index:05d>.parquet``: fixed per chunk, so a retry overwrites."""
    return f"{chunks_prefix(job_id)}{check_index(index, 'chunk index'):05d}.parquet"


def manifest_failures_key(job_id: str) -> str:
    """Where the planner writes the manifest's invalid rows for the aggregation to merge."""
    return f"{chunks_prefix(job_id)}manifest-failures.parquet"


#: Everything users upload lives under this prefix; anything else in the bucket (gallery
#: parts, enrolment photos) is ignored, so that our own writes can never trigger ingestion.
UPLOADS_PREFIX = "uploads/"
_SYSTEM_FILES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


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
        return manifest_upload_key(self.gallery, self.name)


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


def photo_upload_key(gallery: str, subject_id: str, filename: str) -> str:
    """``uploads/<gallery>/<subject_id>/<filename>``: one photo of one subject."""
    return f"{UPLOADS_PREFIX}{validate_id(gallery, 'gallery')}/{validate_id(subject_id)}/{filename}"


def archive_upload_key(gallery: str, name: str) -> str:
    """``uploads/<gallery>/<name>.zip``: a photo set."""
    return f"{UPLOADS_PREFIX}{validate_id(gallery, 'gallery')}/{name}.zip"


def manifest_upload_key(gallery: str, name: str) -> str:
    """``uploads/<gallery>/<name>.csv``: the manifest of ``<name>.zip``."""
    return f"{UPLOADS_PREFIX}{validate_id(gallery, 'gallery')}/{name}.csv"


def is_system_name(part: str) -> bool:
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
    if any(is_system_name(p) for p in parts):
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
