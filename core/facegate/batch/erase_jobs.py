"""Erasing a subject from verification jobs: manifests, probe photos, result tables. Torch-free.

A verification job keeps a person in three places of the (versioned) bucket: the rows of
``jobs/<job_id>/manifest.csv`` that claim them, the probe photos of those rows beside the
manifest, and the tables under ``results/<job_id>/`` (chunk tables, the manifest's refused
rows, ``results.parquet``). Erasing means every object *version* holding them: a key that
names the subject is rewritten without them and every other version of it destroyed
(:func:`facegate.storage.scrub.rewrite_versions`).

What is erased, for a subject within a scope of galleries (``None``: every gallery):

- **manifest rows** whose ``claimed_subject`` is the subject and whose ``gallery`` is in
  scope, valid rows and refused ones alike. The manifest is written back without them
  (cells as written, csv's minimal quoting), or destroyed with all its versions when no row
  is left. A manifest that names the subject as text but cannot be read as a job manifest
  (not UTF-8 CSV, a header without the job columns, too many rows) is destroyed whole: the
  worker refuses the same bytes, so no job ran from it, and its rows cannot be told apart.
  The rewrite is only for erasure: the remaining rows are renumbered by the CSV, while
  result rows keep the numbers they had (``row`` is the row of the manifest the job ran).
- **probe photos** of those rows (in any version of the manifest), every version, when they
  lie in the job folder ``jobs/<job_id>/`` (the job's own upload) and no row left in the
  manifest uses them. A probe still used, or lying elsewhere (``probes/`` has its own 7-day
  lifecycle; another prefix is another store's object), is :class:`Remaining`.
- **result rows** of a scope gallery whose ``claimed_subject`` or ``best_subject`` is the
  subject or whose ``ranks`` name them, in every ``.parquet`` table under ``results/``
  (identify rows name people their manifest never mentions, so every job's tables are read).

Not touched, because they hold no subject id: ``summary.json`` (counts, rates and failure
reasons by code; its counts keep the erased rows) and the DynamoDB job items
(:class:`~facegate.storage.jobs.JobStore`: status, counts and a failure reason made of an
error code and a message that never quotes an id).

A rewritten manifest notifies the jobs queue like any upload; it carries
:data:`~facegate.storage.scrub.ERASURE_METADATA` and the job worker skips such versions
(:func:`is_erasure_rewrite`), so an erasure never starts a job again. A job still running
when its rows are erased writes nothing of the subject afterwards (its chunks and its
aggregation check the tombstones: :mod:`facegate.batch.results_guard`), but its chunk tables
scrubbed here lack rows, so its aggregation fails (rows missing).

:func:`find_in_jobs` is the read-only twin, for the data-subject access export: the same
rows, probes and result rows, decided by the same functions, listed instead of erased.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from facegate.batch.csv_manifest import MAX_MANIFEST_BYTES, decode_manifest, read_manifest
from facegate.batch.manifest import MAX_JOB_ROWS, resolve_probe
from facegate.batch.results import results_from_parquet, results_to_parquet
from facegate.common import validate_id
from facegate.errors import ObjectNotFoundError, ObjectTooLargeError, ValidationError
from facegate.lazy import lazy_module
from facegate.storage.keys import (
    JOBS_PREFIX,
    RESULTS_PREFIX,
    job_id_from_manifest_key,
    job_prefix,
)
from facegate.storage.objects import ObjectRef, ObjectStore
from facegate.storage.scrub import Scrub, Scrubbed, is_rewritten_by_erasure, rewrite_versions

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: :attr:`Scrubbed.kind` and :attr:`Remaining.kind` values.
JOB_MANIFEST = "job_manifest"
JOB_PROBE = "job_probe"
RESULTS_TABLE = "results_table"

#: :attr:`Remaining.reason` values.
OUTSIDE_JOB = "outside_job_folder"
STILL_USED = "still_used"
UNREADABLE = "unreadable"
TOO_LARGE = "too_large"

_MANIFEST_COLUMNS = ("probe", "gallery", "mode")
_CLAIMED = "claimed_subject"


@dataclass(frozen=True)
class Remaining:
    """An object that may still hold the subject and that this erasure left as it is, for
    the caller to decide: ``reason`` is one of :data:`OUTSIDE_JOB` (a probe outside the job
    folder), :data:`STILL_USED` (a probe a row left in the manifest uses),
    :data:`UNREADABLE` (a ``.parquet`` under ``results/`` that is not a results table) or
    :data:`TOO_LARGE` (a manifest over the worker's limit). ``key`` may name the person: a
    receipt, never a log line."""

    key: str
    kind: str
    reason: str


@dataclass(frozen=True)
class JobsErasure:
    """What :func:`erase_from_jobs` did, one :class:`Scrubbed` per key changed (each job's
    manifest then its probes, job by job, then the results tables, in key order), and what
    it left (:class:`Remaining`)."""

    scrubbed: list[Scrubbed] = field(default_factory=list)
    remaining: list[Remaining] = field(default_factory=list)


@dataclass(frozen=True)
class _Scope:
    subject_id: str
    galleries: Set[str] | None

    def covers(self, gallery: str | None) -> bool:
        return self.galleries is None or gallery in self.galleries


def erase_from_jobs(
    s3: S3Client, bucket: str, subject_id: str, galleries: Set[str] | None
) -> JobsErasure:
    """Erase ``subject_id`` from every job of ``bucket`` for ``galleries`` (None: every
    gallery; an empty set: none).

    See the module docstring for what is erased and what is left. Safe to run again: a run
    that finds nothing changes nothing. S3 failures are a
    :class:`~facegate.errors.StorageError` (run it again; what was done stays done).
    """
    scope = _Scope(validate_id(subject_id), galleries)
    done = JobsErasure()
    if galleries is not None and not galleries:
        return done
    objects = ObjectStore(s3, bucket)
    job_versions = _versions_by_key(objects, JOBS_PREFIX)
    results = sorted(k for k in _versions_by_key(objects, RESULTS_PREFIX) if k.endswith(".parquet"))
    identified = _probes_identified_as(objects, results, scope)
    for key in sorted(job_versions):
        job_id = job_id_from_manifest_key(key)
        if job_id is not None:
            named = identified.get(job_id, frozenset())
            _erase_job(objects, job_id, key, job_versions, scope, done, named)
    for key in results:
        _erase_results_table(objects, key, scope, done)
    return done


def _probes_identified_as(
    objects: ObjectStore, keys: list[str], scope: _Scope
) -> dict[str, frozenset[str]]:
    """Per job, the probe keys a result row of a scope gallery identified as the subject
    (best subject, or in the ranks): photos of the person their manifest row never named.
    Read before the tables are scrubbed; a table that cannot be read names nobody here (it
    is left :data:`UNREADABLE` by the results pass)."""
    found: dict[str, set[str]] = {}
    for key in keys:
        job_id = key.removeprefix(RESULTS_PREFIX).partition("/")[0]
        body = _current_body(objects, key)
        if body is None:
            continue
        try:
            table = results_from_parquet(body, key)
        except ValidationError:
            continue
        probes = _identified_probes(table, scope)
        if probes:
            found.setdefault(job_id, set()).update(probes)
    return {job: frozenset(probes) for job, probes in found.items()}


def _identified_probes(table: pa.Table, scope: _Scope) -> set[str]:
    """The probe keys of a results table's rows of a scope gallery that identified the
    subject (best subject, or in the ranks)."""
    found: set[str] = set()
    for probe, gallery, best, ranks in zip(
        table["probe"].to_pylist(),
        table["gallery"].to_pylist(),
        table["best_subject"].to_pylist(),
        table["ranks"].to_pylist(),
        strict=True,
    ):
        ranked = any(rank["subject_id"] == scope.subject_id for rank in ranks or ())
        if scope.covers(gallery) and (best == scope.subject_id or ranked) and probe:
            found.add(str(probe))
    return found


def is_erasure_rewrite(s3: S3Client, ref: ObjectRef) -> bool:
    """Whether the notified object version was written by an erasure, for the job worker:
    such a manifest must not start its job. A version that no longer exists is not one (the
    worker then goes its usual way); other S3 failures are a
    :class:`~facegate.errors.StorageError`, so the notification is retried."""
    try:
        info = ObjectStore(s3, ref.bucket).head(ref.key, version_id=ref.version_id)
    except ObjectNotFoundError:
        return False
    return is_rewritten_by_erasure(info)


# --------------------------------------------------------------------------------------
# Jobs: the manifest and its probes
# --------------------------------------------------------------------------------------


def _erase_job(
    objects: ObjectStore,
    job_id: str,
    key: str,
    job_versions: dict[str, list[str]],
    scope: _Scope,
    done: JobsErasure,
    identified: frozenset[str] = frozenset(),
) -> None:
    dropped: set[str] = set()

    def scrub(body: bytes) -> tuple[bytes | None, int]:
        rewrite = _manifest_rewrite(job_id, body, scope, objects.bucket, identified)
        if rewrite is None:
            return None, 0
        dropped.update(rewrite[2])
        return rewrite[0], rewrite[1]

    try:
        if len(job_versions[key]) > 1:
            # The rewrite destroys older versions unread once the current one names the
            # subject; their rows' probes are wanted all the same.
            _scrub_each_version(objects, key, job_versions[key], scrub)
        found = rewrite_versions(objects, key, JOB_MANIFEST, scrub, max_bytes=MAX_MANIFEST_BYTES)
    except ObjectTooLargeError:
        done.remaining.append(Remaining(key, JOB_MANIFEST, TOO_LARGE))
        return
    if found is None:
        return
    done.scrubbed.append(found)
    still_used = _manifest_probes(job_id, _current_body(objects, key), objects.bucket)
    for probe in sorted(dropped):
        versions = job_versions.get(probe, [])
        if not probe.startswith(job_prefix(job_id)):
            done.remaining.append(Remaining(probe, JOB_PROBE, OUTSIDE_JOB))
        elif probe in still_used:
            done.remaining.append(Remaining(probe, JOB_PROBE, STILL_USED))
        elif versions:
            objects.delete_versions([(probe, v) for v in versions])
            done.scrubbed.append(Scrubbed(probe, JOB_PROBE, len(versions), 1, rewritten=False))


def _scrub_each_version(objects: ObjectStore, key: str, versions: list[str], scrub: Scrub) -> None:
    """Run ``scrub`` over every listed version with bytes (delete markers have none)."""
    for version in versions:
        try:
            found = objects.get(key, version_id=version, max_bytes=MAX_MANIFEST_BYTES)
        except ObjectNotFoundError:
            continue
        scrub(found.body)


def _manifest_rewrite(
    job_id: str, body: bytes, scope: _Scope, bucket: str, identified: frozenset[str] = frozenset()
) -> tuple[bytes, int, frozenset[str]] | None:
    """The manifest without the subject's rows in scope (``b""``: nothing is left), the rows
    removed and their probe keys; None when it has none. The subject's rows: those claiming
    them, and those whose probe a result identified as them (``identified``, probe keys).

    The cheap test first: a manifest whose bytes do not hold the id names nobody by it.
    """
    if not _may_name(body, scope, identified):
        return None
    try:
        header, rows, columns = _manifest_lines(body)
    except ValidationError:
        return b"", 0, frozenset()
    named = _named_rows(job_id, rows, columns, scope, bucket, identified)
    if not named:
        return None
    dropped = frozenset(probe for probe in named.values() if probe is not None)
    kept = [line for index, line in enumerate(rows) if index not in named]
    if not kept:
        return b"", len(named), dropped
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *kept])
    return out.getvalue().encode("utf-8"), len(named), dropped


def _may_name(body: bytes, scope: _Scope, identified: frozenset[str]) -> bool:
    """Whether a manifest is worth parsing: its bytes hold the id, or a result identified
    one of its probes as the subject."""
    return scope.subject_id.encode("ascii") in body or bool(identified)


def _named_rows(
    job_id: str,
    rows: list[list[str]],
    columns: dict[str, int],
    scope: _Scope,
    bucket: str,
    identified: frozenset[str],
) -> dict[int, str | None]:
    """The subject's rows, by their number (the ``row`` of their results), with the probe key
    each names (None: none the worker could read): the rows claiming the subject in a scope
    gallery, and those whose probe a result identified as them."""
    named: dict[int, str | None] = {}
    for index, line in enumerate(rows):
        claimed = _cell(line, columns, _CLAIMED)
        probe = _probe_key(job_id, _cell(line, columns, "probe"), bucket)
        if (claimed == scope.subject_id and scope.covers(_cell(line, columns, "gallery"))) or (
            probe is not None and probe in identified
        ):
            named[index] = probe
    return named


def _manifest_lines(body: bytes) -> tuple[list[str], list[list[str]], dict[str, int]]:
    """Header, data rows (as written) and column positions, read as the worker reads them
    (:func:`~facegate.batch.csv_manifest.read_manifest` gives rows and columns; the header
    is its first non-blank line)."""
    table = read_manifest(
        body, required=_MANIFEST_COLUMNS, optional=(_CLAIMED,), max_rows=MAX_JOB_ROWS
    )
    lines = csv.reader(io.StringIO(decode_manifest(body)), strict=True)
    header = next(line for line in lines if any(cell.strip() for cell in line))
    return header, table.rows, table.columns


def _cell(line: list[str], columns: dict[str, int], name: str) -> str | None:
    """A stripped cell, None when empty or absent (as :mod:`facegate.batch.manifest` reads)."""
    at = columns.get(name)
    value = line[at].strip() if at is not None and at < len(line) else ""
    return value or None


def _probe_key(job_id: str, probe: str | None, bucket: str) -> str | None:
    """The key a probe cell names; None when it names no object the worker could read."""
    if probe is None:
        return None
    try:
        return resolve_probe(job_id, probe, bucket)
    except ValidationError:
        return None


def _manifest_probes(job_id: str, body: bytes | None, bucket: str) -> set[str]:
    """The probe keys every row of a manifest uses (none if it cannot be read)."""
    if body is None:
        return set()
    try:
        _, rows, columns = _manifest_lines(body)
    except ValidationError:
        return set()
    keys = (_probe_key(job_id, _cell(line, columns, "probe"), bucket) for line in rows)
    return {key for key in keys if key is not None}


def _current_body(objects: ObjectStore, key: str) -> bytes | None:
    try:
        return objects.get(key, max_bytes=MAX_MANIFEST_BYTES).body
    except (ObjectNotFoundError, ObjectTooLargeError):
        return None


# --------------------------------------------------------------------------------------
# Results tables
# --------------------------------------------------------------------------------------


def _erase_results_table(objects: ObjectStore, key: str, scope: _Scope, done: JobsErasure) -> None:
    """One table under ``results/``; one that is not a results table (in any version) is
    left whole, :data:`UNREADABLE`: its rows cannot be told apart."""

    def scrub(body: bytes) -> tuple[bytes | None, int]:
        return _results_rewrite(body, scope, key)

    try:
        found = rewrite_versions(objects, key, RESULTS_TABLE, scrub)
    except ValidationError:
        done.remaining.append(Remaining(key, RESULTS_TABLE, UNREADABLE))
        return
    if found is not None:
        done.scrubbed.append(found)


def _results_rewrite(body: bytes, scope: _Scope, key: str) -> tuple[bytes | None, int]:
    """The table without the rows of a scope gallery naming the subject, and how many;
    ``(None, 0)`` if none do. An emptied table is still written (aggregation reads every
    chunk table; a job's ``results.parquet`` stays where its status points)."""
    table = results_from_parquet(body, key)
    keep = [not named for named in _naming_results(table, scope)]
    removed = keep.count(False)
    if not removed:
        return None, 0
    return results_to_parquet(table.filter(keep)), removed


def _naming_results(table: pa.Table, scope: _Scope) -> list[bool]:
    """Per row of a results table, whether it is a scope gallery's naming the subject: as the
    claimed or best subject, or in the ranks."""
    subject = scope.subject_id
    return [
        scope.covers(gallery)
        and (
            subject in (claimed, best) or any(rank["subject_id"] == subject for rank in ranks or ())
        )
        for gallery, claimed, best, ranks in zip(
            table["gallery"].to_pylist(),
            table["claimed_subject"].to_pylist(),
            table["best_subject"].to_pylist(),
            table["ranks"].to_pylist(),
            strict=True,
        )
    ]


# --------------------------------------------------------------------------------------
# Finding, read-only: what an erasure would look at, for the data-subject access export
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRowFound:
    """One manifest row of the subject's. ``row`` is the number the job gives it (the
    ``row`` of its result); ``gallery`` and ``mode`` are the cells as written (None when
    empty); ``probe`` is the key the row's probe names, or the cell as written when it names
    none the worker could read. ``claimed``: the row claims the subject; otherwise a result
    identified its probe as them (a photo of the person all the same)."""

    row: int
    gallery: str | None
    mode: str | None
    probe: str | None
    claimed: bool


@dataclass(frozen=True)
class JobFound:
    """A job whose current manifest holds the subject: its rows and the probe photos of those
    rows lying in the job folder, ``(key, versions)`` (delete markers counted, as the bucket
    lists them). Not ``readable``: the manifest holds the id as text but the worker cannot
    read it (an erasure destroys it whole), so no row is told apart."""

    job_id: str
    manifest: str
    rows: tuple[ManifestRowFound, ...] = ()
    probes: tuple[tuple[str, int], ...] = ()
    readable: bool = True


@dataclass(frozen=True)
class ResultsFound:
    """A table under ``results/`` with rows naming the subject: their ``row`` values."""

    key: str
    rows: tuple[int, ...]


@dataclass(frozen=True)
class JobsFound:
    """What :func:`find_in_jobs` found: jobs and results tables in key order, and what it
    could not read (:class:`Remaining`: a manifest :data:`TOO_LARGE`, a table
    :data:`UNREADABLE`), which may or may not hold the subject."""

    jobs: list[JobFound] = field(default_factory=list)
    results: list[ResultsFound] = field(default_factory=list)
    remaining: list[Remaining] = field(default_factory=list)


def find_in_jobs(
    objects: ObjectStore, subject_id: str, galleries: Set[str] | None = None
) -> JobsFound:
    """Where the jobs of the bucket hold ``subject_id`` for ``galleries`` (None: every
    gallery), changing nothing: the rows, probes and result rows :func:`erase_from_jobs`
    would erase, decided by the same functions, in the current version of each object (older
    versions expire after ``NoncurrentVersionDays``; an erasure destroys them sooner).

    Every results table is read once, first: its rows naming the subject, and the probes it
    identified as them, which makes their manifest rows the subject's too.
    """
    scope = _Scope(validate_id(subject_id), galleries)
    found = JobsFound()
    if galleries is not None and not galleries:
        return found
    job_versions = _versions_by_key(objects, JOBS_PREFIX)
    identified: dict[str, set[str]] = {}
    tables = sorted(k for k in _versions_by_key(objects, RESULTS_PREFIX) if k.endswith(".parquet"))
    for key in tables:
        try:
            table = results_from_parquet(objects.get(key).body, key)
        except ObjectNotFoundError:  # deleted: a delete marker is current
            continue
        except ValidationError:
            found.remaining.append(Remaining(key, RESULTS_TABLE, UNREADABLE))
            continue
        of_job = key.removeprefix(RESULTS_PREFIX).partition("/")[0]
        identified.setdefault(of_job, set()).update(_identified_probes(table, scope))
        named = _naming_results(table, scope)
        numbers = cast(list[int], table["row"].to_pylist())  # the schema: never null
        rows = [r for r, hit in zip(numbers, named, strict=True) if hit]
        if rows:
            found.results.append(ResultsFound(key, tuple(rows)))
    for key in sorted(job_versions):
        job_id = job_id_from_manifest_key(key)
        if job_id is None:
            continue
        try:
            body = objects.get(key, max_bytes=MAX_MANIFEST_BYTES).body
        except ObjectNotFoundError:
            continue
        except ObjectTooLargeError:
            found.remaining.append(Remaining(key, JOB_MANIFEST, TOO_LARGE))
            continue
        probes = frozenset(identified.get(job_id, ()))
        job = _find_in_manifest(job_id, key, body, scope, objects.bucket, probes, job_versions)
        if job is not None:
            found.jobs.append(job)
    return found


def _find_in_manifest(
    job_id: str,
    key: str,
    body: bytes,
    scope: _Scope,
    bucket: str,
    identified: frozenset[str],
    job_versions: dict[str, list[str]],
) -> JobFound | None:
    """The subject's rows of one manifest, as :func:`_manifest_rewrite` would drop them."""
    if not _may_name(body, scope, identified):
        return None
    try:
        _, lines, columns = _manifest_lines(body)
    except ValidationError:
        return JobFound(job_id, key, readable=False)
    named = _named_rows(job_id, lines, columns, scope, bucket, identified)
    if not named:
        return None
    rows = []
    for index, probe in sorted(named.items()):
        line = lines[index]
        gallery = _cell(line, columns, "gallery")
        claimed = _cell(line, columns, _CLAIMED) == scope.subject_id and scope.covers(gallery)
        shown = probe if probe is not None else _cell(line, columns, "probe")
        rows.append(ManifestRowFound(index, gallery, _cell(line, columns, "mode"), shown, claimed))
    in_folder = sorted(
        {p for p in named.values() if p and p.startswith(job_prefix(job_id)) and p in job_versions}
    )
    probes = tuple((p, len(job_versions[p])) for p in in_folder)
    return JobFound(job_id, key, tuple(rows), probes)


def _versions_by_key(objects: ObjectStore, prefix: str) -> dict[str, list[str]]:
    """Every version and delete marker under ``prefix``, by key, in one listing."""
    grouped: dict[str, list[str]] = {}
    for key, version in objects.versions(prefix):
        grouped.setdefault(key, []).append(version)
    return grouped
