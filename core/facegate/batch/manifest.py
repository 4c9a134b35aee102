"""Verification job manifests: CSV rows in, valid rows and recorded row failures out. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from facegate.batch.csv_manifest import read_manifest
from facegate.common import check_index, validate_id
from facegate.errors import ValidationError
from facegate.storage.keys import ENROLMENT_PREFIX, job_prefix

MAX_JOB_ROWS = 100_000
#: S3's own limit on key length.
MAX_PROBE_KEY_BYTES = 1024

Mode = Literal["verify", "identify"]
VERIFY: Mode = "verify"
IDENTIFY: Mode = "identify"
MODES: tuple[Mode, ...] = (VERIFY, IDENTIFY)

#: Reason codes of manifest rows that never reach a worker; stable, so they can be counted.
MISSING_PROBE = "missing_probe"
INVALID_PROBE = "invalid_probe"
INVALID_MODE = "invalid_mode"
INVALID_ID = "invalid_id"
MISSING_CLAIMED_SUBJECT = "missing_claimed_subject"

_REQUIRED_COLUMNS = ("probe", "gallery", "mode")
_OPTIONAL_COLUMNS = ("claimed_subject",)
_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    """One valid manifest row. ``row`` is its 0-based index among the manifest's data rows
    (header and blank lines not counted); ``probe_key`` is the absolute key in the bucket.

    ``claimed_subject`` is required for ``verify``; for ``identify`` it is optional and kept,
    so that a caller can check the identification against it.
    """

    row: int
    probe_key: str
    claimed_subject: str | None
    gallery: str
    mode: Mode

    def __post_init__(self) -> None:
        if check_index(self.row, "row") > _INT32_MAX:
            raise ValidationError(f"row {self.row} is out of range")
        problem = _key_problem(self.probe_key)
        if problem is not None:
            raise ValidationError(f"probe key {self.probe_key!r}: {problem}")
        validate_id(self.gallery, "gallery")
        if self.mode not in MODES:
            raise ValidationError(f"mode must be verify or identify, got {self.mode!r}")
        if self.claimed_subject is not None:
            validate_id(self.claimed_subject, "claimed_subject")
        elif self.mode == VERIFY:
            raise ValidationError("a verify row needs a claimed_subject")


@dataclass(frozen=True)
class RowFailure:
    """A manifest row refused before any work: it becomes a ``failed`` result row.

    ``probe`` is the resolved key when the probe itself was valid, else the text as written;
    ``mode``, ``gallery`` and ``claimed_subject`` are the cells as written (stripped), so that
    the result row shows what the user sent.
    """

    row: int
    probe: str
    reason_code: str
    message: str
    mode: str = ""
    gallery: str = ""
    claimed_subject: str | None = None


def parse_job_manifest(
    job_id: str, text: str | bytes, *, bucket: str | None = None
) -> tuple[list[JobRow], list[RowFailure]]:
    """The manifest's valid rows and its refused rows; together they account for every row.

    A CSV with a header naming ``probe``, ``gallery`` and ``mode`` (``claimed_subject``
    optional; any order, any case; extra columns ignored; an Excel BOM tolerated; blank lines
    skipped). A probe is resolved by :func:`resolve_probe`. A row is refused, with the first
    problem found, for: an empty probe (``missing_probe``), an unsafe or foreign probe
    (``invalid_probe``), a mode other than verify/identify (``invalid_mode``), an invalid
    gallery or subject id (``invalid_id``), a verify row without a subject
    (``missing_claimed_subject``). The file as a whole is a :class:`ValidationError` when
    :func:`facegate.batch.csv_manifest.read_manifest` refuses it (not UTF-8 CSV, a required
    column missing, more than :data:`MAX_JOB_ROWS` rows) or it has no data rows.
    """
    validate_id(job_id, "job_id")
    rows: list[JobRow] = []
    failures: list[RowFailure] = []
    for index, cells in enumerate(_manifest_cells(text)):
        outcome = _parse_row(job_id, index, cells, bucket)
        if isinstance(outcome, JobRow):
            rows.append(outcome)
        else:
            failures.append(outcome)
    return rows, failures


def resolve_probe(job_id: str, probe: str, bucket: str | None = None) -> str:
    """The absolute S3 key a manifest's probe names; :class:`ValidationError` if unsafe.

    Three forms: ``s3://<bucket>/<key>`` (only when ``bucket`` is given and is the one
    named: the worker's role must not read other buckets), ``/<key>`` (a key from the bucket
    root) and anything else, a path relative to the job folder ``jobs/<job_id>/`` (``./``
    segments allowed, ``..`` refused: it would leave the folder). The private enrolment
    photos are never probes.
    """
    if probe.startswith("s3://"):
        named, _, key = probe.removeprefix("s3://").partition("/")
        if bucket is None or named != bucket:
            where = f"s3://{bucket}/" if bucket else "the job's bucket"
            raise ValidationError(f"only URIs of {where} can be probes")
    elif probe.startswith("/"):
        key = probe.removeprefix("/")
    else:
        parts = [p for p in probe.split("/") if p != "."]
        if ".." in parts:
            raise ValidationError("'..' would leave the job folder")
        key = job_prefix(job_id) + "/".join(parts)
    problem = _key_problem(key)
    if problem is not None:
        raise ValidationError(problem)
    return key


def _key_problem(key: Any) -> str | None:
    """Why ``key`` cannot name a probe object, or None."""
    if not isinstance(key, str) or not key:
        return "empty key"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return "empty, '.' or '..' path segments are not allowed"
    if key.startswith(ENROLMENT_PREFIX):
        return "enrolment photos cannot be used as probes"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "control characters are not allowed"
    if len(key.encode("utf-8")) > MAX_PROBE_KEY_BYTES:
        return f"longer than {MAX_PROBE_KEY_BYTES} bytes"
    return None


def _manifest_cells(text: str | bytes) -> list[dict[str, str]]:
    """The data rows as ``{column: stripped cell}`` for the columns we read."""
    table = read_manifest(
        text, required=_REQUIRED_COLUMNS, optional=_OPTIONAL_COLUMNS, max_rows=MAX_JOB_ROWS
    )
    if not table.rows:
        raise ValidationError("the manifest has a header but no rows")
    return [
        {name: line[at].strip() if at < len(line) else "" for name, at in table.columns.items()}
        for line in table.rows
    ]


def _parse_row(
    job_id: str, index: int, cells: Mapping[str, str], bucket: str | None
) -> JobRow | RowFailure:
    mode = cells["mode"].lower()
    gallery = cells["gallery"]
    claimed = cells.get("claimed_subject") or None
    probe = cells["probe"]

    def refused(code: str, message: str, shown: str = probe) -> RowFailure:
        return RowFailure(index, shown, code, message, mode, gallery, claimed)

    if not probe:
        return refused(MISSING_PROBE, "the probe cell is empty")
    try:
        key = resolve_probe(job_id, probe, bucket)
    except ValidationError as exc:
        return refused(INVALID_PROBE, f"probe {probe!r}: {exc.message}")
    problem = _row_problem(mode, gallery, claimed)
    if problem is not None:
        return refused(*problem, shown=key)
    return JobRow(index, key, claimed, gallery, cast(Mode, mode))


def _row_problem(mode: str, gallery: str, claimed: str | None) -> tuple[str, str] | None:
    if mode not in MODES:
        return INVALID_MODE, f"mode must be verify or identify, got {mode!r}"
    for value, what in ((gallery, "gallery"), (claimed, "claimed_subject")):
        if value is None:
            continue
        try:
            validate_id(value, what)
        except ValidationError as exc:
            return INVALID_ID, f"{exc.message}, got {value!r}"
    if mode == VERIFY and claimed is None:
        return MISSING_CLAIMED_SUBJECT, "a verify row needs a claimed_subject"
    return None
