"""Data-subject access: everything FaceGate holds on one person, as one answer.

``GET /subjects/{id}/export`` is the person's right of access (GDPR art. 15) for biometric
data, so it looks wherever FaceGate writes a subject, not only where the API enrols one:

- the enrolment (the subject's META item and every face item), and every object and
  version under the subject's enrolment photo prefix, referenced by a face or not;
- every gallery under ``galleries/``: the rows naming the subject in ``gallery.parquet``
  and in each uncompacted part (parts stay the source of truth until erasure rewrites them,
  so a compacted gallery that dropped a deleted subject does not mean the parts did), and
  the rejects rows of photos filed under the subject's folder;
- every upload filed under the subject's folder (``uploads/<g>/<subject>/...``), with its
  version count: the photos a gallery was built from;
- the tombstones: the enrolled subject's (``tombstone``) and each gallery's
  (``erasures``), whose time says that older rows are pending compaction;
- every verification job (``jobs/<job_id>/manifest.csv``) whose manifest rows claim the
  subject, or whose probes a result identified as them, with those rows' probe photos in the
  job folder, and every results table under ``results/`` with rows naming them (claimed,
  best, or ranked): the rows an erasure would drop, found by the erasure's own decisions
  (:func:`facegate.batch.erase_jobs.find_in_jobs`);
- the messages of the dead-letter queues naming them, by id, found by the erasure's
  decision (:func:`facegate.batch.dlq.body_names_subject`) and left in the queue, visible
  again once the scan ends (:func:`facegate.batch.dlq.find_dead_letters`).

A subject known only to a batch gallery, a job or a dead letter is found too; only a subject
found nowhere is an :class:`UnknownSubjectError`. Objects that could not be read
(``unchecked``: a manifest over the worker's limit, a ``.parquet`` under ``results/`` that
is no results table) are listed but make no subject known: nothing says they hold them.

Photo bytes are never returned (the keys say where they are); embeddings only when asked,
rounded to 6 decimals. Gallery tables are read through ranged GETs of the footer and the two
string columns only: the embedding column, the bulk of a part, is never downloaded. Result
rows are listed by number only (their scores stay out), and dead letters by id only (a body
may name other people).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from facegate.batch.dlq import body_names_subject, find_dead_letters
from facegate.batch.erase_jobs import JobFound, JobsFound, find_in_jobs
from facegate.common import validate_id
from facegate.errors import ObjectNotFoundError, StorageError, UnknownSubjectError
from facegate.lazy import lazy_module
from facegate.storage.galleries import GalleryStore
from facegate.storage.keys import GALLERY_PREFIX, UPLOADS_PREFIX
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import StoredFace, Subject, SubjectStore
from facegate.storage.tombstones import API_SCOPE, Tombstones, gallery_scope

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
else:
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")
    pq = lazy_module("pyarrow.parquet")

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

#: Decimals of an exported embedding: float32 carries about 7 significant digits.
EMBEDDING_DECIMALS = 6
_GALLERY_FILE = "gallery.parquet"
_DELTA_FILE = "delta.parquet"
#: How long the export's scan hides a dead letter: past the API's 30 s limit, so one request
#: sees each message once, yet short, so that a request killed mid-scan (its release never
#: sent) delays the queue's messages by a minute, not by an erasure's quarter of an hour.
DEAD_LETTER_SCAN_SECONDS = 60


@dataclass
class _GalleryKeys:
    """One gallery's objects, as the listing of ``galleries/`` found them."""

    compacted: str | None = None
    delta: str | None = None
    parts: list[str] = field(default_factory=list)
    rejects: list[str] = field(default_factory=list)


def _galleries(keys: list[str]) -> dict[str, _GalleryKeys]:
    """``galleries/<g>/gallery.parquet``, ``.../delta.parquet``, ``.../parts/*.parquet`` and
    ``.../rejects/*.parquet`` by gallery; anything else under the prefix is not FaceGate's
    and is skipped."""
    found: dict[str, _GalleryKeys] = {}
    for key in keys:
        parts = key[len(GALLERY_PREFIX) :].split("/")
        if not key.endswith(".parquet") or len(parts) not in (2, 3):
            continue
        entry = found.setdefault(parts[0], _GalleryKeys())
        if len(parts) == 2 and parts[1] == _GALLERY_FILE:
            entry.compacted = key
        elif len(parts) == 2 and parts[1] == _DELTA_FILE:
            entry.delta = key
        elif len(parts) == 3 and parts[1] == "parts":
            entry.parts.append(key)
        elif len(parts) == 3 and parts[1] == "rejects":
            entry.rejects.append(key)
    return found


def names_subject(image_key: str, subject_id: str) -> bool:
    """Whether an upload's image key files the photo under ``subject_id``'s folder:
    ``uploads/<g>/<subject>/<photo>`` or an archive member ``uploads/<g>/<a>.zip/[<top>/]
    <subject>/<photo>``. Rejects carry no subject column, so this is the only link; a reject
    of an archive mapped by a manifest cannot be attributed (its path names no subject)."""
    parts = image_key.split("/")
    return image_key.startswith(UPLOADS_PREFIX) and len(parts) >= 4 and parts[-2] == subject_id


def _rounded(vector: Any) -> list[float]:
    return [round(float(v), EMBEDDING_DECIMALS) for v in vector]


def _job(job: JobFound) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "manifest": job.manifest,
        "readable": job.readable,
        "rows": [
            {
                "row": r.row,
                "gallery": r.gallery,
                "mode": r.mode,
                "probe": r.probe,
                "claimed": r.claimed,
            }
            for r in job.rows
        ],
        "probes": [{"key": k, "versions": n} for k, n in job.probes],
    }


def queue_name(url: str) -> str:
    """A queue's name, the last segment of its URL: what the answer shows, not the URL with
    its account id."""
    return url.rstrip("/").rsplit("/", 1)[-1]


class SubjectExport:
    """What is held on one subject across the subject, photo and gallery stores, the jobs
    and results of the bucket, the tombstones and the dead-letter queues of one deployment
    (one table, one bucket). Without ``sqs`` no queue is scanned."""

    def __init__(
        self,
        subjects: SubjectStore,
        photos: PhotoStore,
        galleries: GalleryStore,
        tombstones: Tombstones | None = None,
        *,
        sqs: SQSClient | None = None,
        dead_letter_queues: Sequence[str] = (),
    ) -> None:
        self.subjects = subjects
        self.photos = photos
        self.galleries = galleries
        self.tombstones = tombstones
        self.sqs = sqs
        self.dead_letter_queues = list(dead_letter_queues)

    def export(self, subject_id: str, *, embeddings: bool = False) -> dict[str, Any]:
        """The subject's enrolment, faces, photos, gallery and rejects rows, tombstones, job
        manifest rows and probes, result rows and dead letters; :class:`UnknownSubjectError`
        when none of them holds anything."""
        validate_id(subject_id)
        subject, faces = self._enrolment(subject_id)
        versions = Counter(
            key for key, _ in self.photos.objects.versions(self.photos.subject_prefix(subject_id))
        )
        galleries = self._gallery_entries(subject_id)
        uploads = self._uploads(subject_id)
        deleted_at = self.tombstones.deleted_at(API_SCOPE, subject_id) if self.tombstones else None
        erasures = self._erasures(subject_id, galleries, uploads)
        jobs = find_in_jobs(self.galleries.objects, subject_id)
        dead_letters = self._dead_letters(subject_id)
        held = (subject, versions, galleries, uploads, erasures, deleted_at)
        if not (any(held) or jobs.jobs or jobs.results or dead_letters):
            raise UnknownSubjectError(f"nothing is held on subject {subject_id!r}")
        return {
            "subject_id": subject_id,
            "enrolment": subject.to_dict() if subject is not None else None,
            "faces": [self._face(f, versions, embeddings) for f in faces],
            "photos": [{"key": k, "versions": n} for k, n in sorted(versions.items())],
            "galleries": galleries,
            "uploads": uploads,
            "tombstone": None if deleted_at is None else {"deleted_at": deleted_at},
            "erasures": erasures,
            **self._jobs_entries(jobs),
            "dead_letters": dead_letters,
            "embeddings_included": embeddings,
        }

    @staticmethod
    def _jobs_entries(found: JobsFound) -> dict[str, Any]:
        return {
            "jobs": [_job(job) for job in found.jobs],
            "results": [
                {"key": r.key, "rows": len(r.rows), "row_numbers": list(r.rows)}
                for r in found.results
            ],
            "unchecked": [{"key": r.key, "reason": r.reason} for r in found.remaining],
        }

    def _dead_letters(self, subject_id: str) -> list[dict[str, Any]]:
        """Per dead-letter queue holding messages naming the subject (in any scope: the
        enrolled subjects and every gallery), their ids; every message stays in its queue."""
        if self.sqs is None:
            return []
        found = []
        for url in self.dead_letter_queues:
            ids = find_dead_letters(
                self.sqs,
                url,
                lambda body: body_names_subject(body, subject_id, None, True),
                visibility_seconds=DEAD_LETTER_SCAN_SECONDS,
            )
            if ids:
                found.append({"queue": queue_name(url), "messages": len(ids), "message_ids": ids})
        return found

    def _enrolment(self, subject_id: str) -> tuple[Subject | None, list[StoredFace]]:
        try:
            subject = self.subjects.get_subject(subject_id)
            _, faces = self.subjects.get_embeddings(subject_id)
        except UnknownSubjectError:  # a batch-only subject, or one deleted
            return None, []
        return subject, faces

    @staticmethod
    def _face(face: StoredFace, versions: Counter[str], embeddings: bool) -> dict[str, Any]:
        return {
            "face_id": face.face_id,
            "model_id": face.model_id,
            "weights_sha256": face.weights_sha256,
            "created_at": face.created_at,
            "bbox": list(face.bbox) if face.bbox is not None else None,
            "det_score": face.det_score,
            "image_key": face.image_key,
            "photo_versions": versions.get(face.image_key, 0),
            "embedding": _rounded(face.embedding) if embeddings else None,
        }

    def _uploads(self, subject_id: str) -> list[dict[str, Any]]:
        """Every object (and its versions) filed under the subject's folder of an upload
        prefix; archive members are reported by the gallery rows and rejects they became."""
        counts: Counter[str] = Counter(
            key
            for key, _ in self.galleries.objects.versions(UPLOADS_PREFIX)
            if names_subject(key, subject_id) and ".zip/" not in key
        )
        return [{"key": k, "versions": n} for k, n in sorted(counts.items())]

    def _erasures(
        self, subject_id: str, galleries: list[dict[str, Any]], uploads: list[dict[str, Any]]
    ) -> list[dict[str, str]]:
        """The gallery tombstones of the subject, for every gallery under ``galleries/``
        (one consistent read of the tombstones, matched by keyed hash)."""
        if self.tombstones is None:
            return []
        names = set(_galleries(self.galleries.objects.list_keys(GALLERY_PREFIX)))
        names |= {g["gallery"] for g in galleries}
        names |= {u["key"].split("/")[1] for u in uploads}
        erased = self.tombstones.all()
        found = []
        for name in sorted(names):
            when = erased.in_scope(gallery_scope(name), [subject_id]).get(subject_id)
            if when is not None:
                found.append({"scope": gallery_scope(name), "deleted_at": when})
        return found

    # -- galleries -----------------------------------------------------------------------

    def _gallery_entries(self, subject_id: str) -> list[dict[str, Any]]:
        """Each gallery holding a row or a reject of the subject, sorted by name."""
        listing = _galleries(self.galleries.objects.list_keys(GALLERY_PREFIX))
        entries = []
        for name, found in sorted(listing.items()):
            compacted = (
                self._rows(found.compacted, "subject_id", subject_id) if found.compacted else None
            )
            delta = self._rows(found.delta, "subject_id", subject_id) if found.delta else None
            parts = [self._rows(k, "subject_id", subject_id) for k in found.parts]
            rejects = [self._rows(k, None, subject_id) for k in found.rejects]
            parts = [p for p in parts if p["rows"]]
            rejects = [r for r in rejects if r["rows"]]
            if (compacted and compacted["rows"]) or (delta and delta["rows"]) or parts or rejects:
                entries.append(
                    {
                        "gallery": name,
                        "compacted": compacted if compacted and compacted["rows"] else None,
                        "delta": delta if delta and delta["rows"] else None,
                        "parts": parts,
                        "rejects": rejects,
                    }
                )
        return entries

    def _rows(self, key: str, column: str | None, subject_id: str) -> dict[str, Any]:
        """The rows of the table at ``key`` naming the subject: by its ``column`` (gallery
        tables), else (rejects) by their ``subject_id`` where they have one and by the folder
        of the image key. Only the footer and the columns read are fetched."""
        columns = ["image_key"] if column is None else [column, "image_key"]
        try:
            with self.galleries.objects.open(key) as reader:
                source = pq.ParquetFile(pa.PythonFile(reader, mode="r"))
                if column is None and "subject_id" in source.schema_arrow.names:
                    columns = ["image_key", "subject_id"]
                table = source.read(columns=columns)
        except ObjectNotFoundError as exc:
            raise StorageError(
                f"{exc.message}: it changed while it was read, retry", detail=exc.detail
            ) from exc
        except pa.ArrowException as exc:
            raise StorageError(f"not a Parquet file: s3://{self.galleries.bucket}/{key}") from exc
        image_keys = table["image_key"].to_pylist()
        if column is None:
            named = (
                table["subject_id"].to_pylist()
                if "subject_id" in table.column_names
                else [None] * len(image_keys)
            )
            hits = [
                str(k)
                for k, who in zip(image_keys, named, strict=True)
                if who == subject_id or names_subject(str(k), subject_id)
            ]
        else:
            mask = pc.equal(table[column], pa.scalar(subject_id)).to_pylist()
            hits = [str(k) for k, hit in zip(image_keys, mask, strict=True) if hit]
        return {"key": key, "rows": len(hits), "image_keys": hits}


__all__ = ["EMBEDDING_DECIMALS", "SubjectExport", "names_subject", "queue_name"]
