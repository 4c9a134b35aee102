"""Batch verification jobs: a manifest in, one results table and one summary out. Torch-free.

A user uploads ``jobs/<job_id>/manifest.csv``; each row names a probe photo, a gallery and a
mode (``verify`` against a claimed subject, or ``identify`` by top-k search). This module is
everything about a job except the embedding, so that planning, bookkeeping and aggregation
run, and are tested, without torch:

1. The manifest's notification (:func:`job_id_from_manifest_key`): :func:`parse_manifest`
   splits it into valid :class:`JobRow` values and :class:`RowFailure` values (bad rows are
   recorded, never dropped); :meth:`JobStore.create` registers the job, conditionally, so
   that a duplicate notification starts nothing twice; the failures are written once, as a
   results table (:func:`failure_records`), to :func:`manifest_failures_key`; the valid rows
   go to the queue as :class:`JobChunk` messages (:func:`plan_job_chunks`), or, when there
   are none, an :class:`AggregateRequest` goes straight away.
2. Each chunk: the worker embeds its probes, builds one record per row
   (:func:`verify_record`, :func:`identify_record`, :func:`failed_record`), writes the
   table to :func:`chunk_result_key` (a retry overwrites it) and calls
   :meth:`JobStore.chunk_done`; the caller that sees ``done == total`` sends the
   :class:`AggregateRequest`.
3. Aggregation, once: :func:`aggregate` merges the chunk tables and the manifest failures
   into ``results/<job_id>/results.parquet`` and ``summary.json``; :meth:`JobStore.finish`.

Results live under ``results/``, outside ``jobs/``, so writing them can never trigger a job.

This module must never import torch, directly or indirectly: it runs in light zip Lambdas.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, Literal, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from facegate.aws import aws_client
from facegate.errors import FaceGateError, UnknownJobError, ValidationError
from facegate.settings import Settings
from facegate.stores import ENROLMENT_PREFIX, ID_PATTERN, _aws_errors, _error_code, validate_id

JOBS_PREFIX = "jobs/"
RESULTS_PREFIX = "results/"
MANIFEST_NAME = "manifest.csv"
#: Like the ingest manifests: 100 000 rows of long unicode paths stay well below this.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_JOB_ROWS = 100_000
#: ``done_chunks`` is one DynamoDB string set in a 400 KB item: 10 000 indexes take ~60 KB.
MAX_JOB_CHUNKS = 10_000
#: S3's own limit on key length.
MAX_PROBE_KEY_BYTES = 1024
#: SQS refuses bodies over 256 KiB; keep room for the envelope and message attributes.
MAX_CHUNK_MESSAGE_BYTES = 240_000
MAX_REASON_CHARS = 1024
CHUNK_MESSAGE_TYPE = "facegate.job_chunk"
AGGREGATE_MESSAGE_TYPE = "facegate.job_aggregate"
MESSAGE_VERSION = 1

Mode = Literal["verify", "identify"]
VERIFY: Mode = "verify"
IDENTIFY: Mode = "identify"
MODES: tuple[Mode, ...] = (VERIFY, IDENTIFY)
DECISIONS = ("match", "no_match", "identified", "not_identified", "failed")
FAILED = "failed"
_DECISION_MODE = {
    "match": VERIFY,
    "no_match": VERIFY,
    "identified": IDENTIFY,
    "not_identified": IDENTIFY,
}

#: Reason codes of manifest rows that never reach a worker; stable, so they can be counted.
MISSING_PROBE = "missing_probe"
INVALID_PROBE = "invalid_probe"
INVALID_MODE = "invalid_mode"
INVALID_ID = "invalid_id"
MISSING_CLAIMED_SUBJECT = "missing_claimed_subject"

#: Job states: ``running`` from creation until aggregation finishes or the job fails.
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED_STATUS = "failed"

_REQUIRED_COLUMNS = ("probe", "gallery", "mode")
_OPTIONAL_COLUMNS = ("claimed_subject",)
_JOB_PK = "JOB#"
_META_SK = "META"
_INT32_MAX = 2**31 - 1
#: Cosines of float32 unit vectors stray slightly past +-1; anything further is not a cosine.
_COSINE_SLACK = 1e-3
#: How far a similarity may sit on the wrong side of the threshold for its decision: rounding
#: to float32 on the way to a record must not turn a correct verdict into a refused table.
_DECISION_SLACK = 1e-6


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


def chunk_result_key(job_id: str, index: int) -> str:
    """``results/<job_id>/chunks/<index:05d>.parquet``: fixed per chunk, so a retry overwrites."""
    return f"{results_prefix(job_id)}chunks/{_check_index(index, 'chunk index'):05d}.parquet"


def manifest_failures_key(job_id: str) -> str:
    """Where the planner writes the manifest's invalid rows for the aggregation to merge."""
    return f"{results_prefix(job_id)}chunks/manifest-failures.parquet"


def _check_index(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _check_positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{what} must be a positive int, got {value!r}")
    return value


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
        if _check_index(self.row, "row") > _INT32_MAX:
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


def parse_manifest(
    job_id: str, text: str | bytes, *, bucket: str | None = None
) -> tuple[list[JobRow], list[RowFailure]]:
    """The manifest's valid rows and its refused rows; together they account for every row.

    A CSV with a header naming ``probe``, ``gallery`` and ``mode`` (``claimed_subject``
    optional; any order, any case; extra columns ignored; an Excel BOM tolerated; blank lines
    skipped). A probe is resolved by :func:`resolve_probe`. A row is refused, with the first
    problem found, for: an empty probe (``missing_probe``), an unsafe or foreign probe
    (``invalid_probe``), a mode other than verify/identify (``invalid_mode``), an invalid
    gallery or subject id (``invalid_id``), a verify row without a subject
    (``missing_claimed_subject``). The file as a whole is a :class:`ValidationError` when it
    is not UTF-8 CSV, lacks a required column, has no data rows or too many.
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


def _manifest_text(text: str | bytes) -> str:
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_MANIFEST_BYTES:
            raise ValidationError(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            return bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationError("the manifest is not UTF-8 text") from exc
    if not isinstance(text, str):
        raise ValidationError("the manifest must be text")
    if len(text) > MAX_MANIFEST_BYTES:
        raise ValidationError(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    return text.removeprefix("\ufeff")


def _manifest_cells(text: str | bytes) -> list[dict[str, str]]:
    """The data rows as ``{column: stripped cell}`` for the columns we read."""
    try:
        lines = list(csv.reader(io.StringIO(_manifest_text(text)), strict=True))
    except csv.Error as exc:
        raise ValidationError(f"the manifest is not valid CSV: {exc}") from exc
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        raise ValidationError("the manifest is empty")
    columns = _header_columns(lines[0])
    data = lines[1:]
    if not data:
        raise ValidationError("the manifest has a header but no rows")
    if len(data) > MAX_JOB_ROWS:
        raise ValidationError(f"the manifest has more than {MAX_JOB_ROWS} rows")
    return [
        {name: line[at].strip() if at < len(line) else "" for name, at in columns.items()}
        for line in data
    ]


def _header_columns(header: Sequence[str]) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header]
    missing = [c for c in _REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValidationError(
            f"the manifest's header lacks {', '.join(missing)}: it needs probe, gallery and "
            "mode columns (claimed_subject optional)"
        )
    wanted = (*_REQUIRED_COLUMNS, *_OPTIONAL_COLUMNS)
    repeated = sorted(c for c in wanted if names.count(c) > 1)
    if repeated:
        raise ValidationError(f"the manifest's header repeats {', '.join(repeated)}")
    return {c: names.index(c) for c in wanted if c in names}


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


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobChunk:
    """A slice of a job's valid rows, sent to the queue for one worker invocation.

    ``index`` counts from 0 to ``count - 1``; :meth:`JobStore.chunk_done` counts them.
    """

    job_id: str
    index: int
    count: int
    rows: tuple[JobRow, ...]

    def __post_init__(self) -> None:
        validate_id(self.job_id, "job_id")
        _check_index(self.index, "chunk index")
        _check_positive(self.count, "chunk count")
        if self.index >= self.count:
            raise ValidationError(f"chunk index {self.index} out of range for {self.count}")
        if not isinstance(self.rows, tuple) or not self.rows:
            raise ValidationError("a job chunk needs a non-empty tuple of rows")
        if not all(isinstance(r, JobRow) for r in self.rows):
            raise ValidationError("job chunk rows must be JobRow values")

    def to_message(self) -> str:
        """The SQS body: compact ASCII JSON, rows as ``[row, key, gallery, mode, subject]``."""
        return _compact(
            {
                "type": CHUNK_MESSAGE_TYPE,
                "version": MESSAGE_VERSION,
                "job_id": self.job_id,
                "index": self.index,
                "count": self.count,
                "rows": [_row_wire(r) for r in self.rows],
            }
        )

    @classmethod
    def from_message(cls, body: str) -> JobChunk:
        """Inverse of :meth:`to_message`, every row re-validated; :class:`ValidationError`
        for anything else (a poison message no retry will fix)."""
        doc = _message_doc(body, CHUNK_MESSAGE_TYPE)
        rows = doc.get("rows")
        if not isinstance(rows, list):
            raise ValidationError("job chunk message rows must be a list")
        try:
            return cls(
                job_id=doc["job_id"],
                index=doc["index"],
                count=doc["count"],
                rows=tuple(_row_from_wire(r) for r in rows),
            )
        except KeyError as exc:
            raise ValidationError("job chunk message is missing a field", detail=str(exc)) from exc


@dataclass(frozen=True)
class AggregateRequest:
    """Asks for the one aggregation of a job whose chunks are all done; safe to deliver twice."""

    job_id: str

    def __post_init__(self) -> None:
        validate_id(self.job_id, "job_id")

    def to_message(self) -> str:
        return _compact(
            {"type": AGGREGATE_MESSAGE_TYPE, "version": MESSAGE_VERSION, "job_id": self.job_id}
        )

    @classmethod
    def from_message(cls, body: str) -> AggregateRequest:
        doc = _message_doc(body, AGGREGATE_MESSAGE_TYPE)
        if "job_id" not in doc:
            raise ValidationError("aggregate message is missing job_id")
        return cls(doc["job_id"])


def is_job_chunk_message(body: Any) -> bool:
    """Whether an SQS body is one of our job chunk messages (rather than an S3 notification)."""
    return _typed_doc(body, CHUNK_MESSAGE_TYPE) is not None


def is_aggregate_message(body: Any) -> bool:
    return _typed_doc(body, AGGREGATE_MESSAGE_TYPE) is not None


def plan_job_chunks(job_id: str, rows: Sequence[JobRow], chunk_size: int) -> list[JobChunk]:
    """Split the rows, in order, into chunks of at most ``chunk_size`` rows.

    A chunk is closed early when its message would pass :data:`MAX_CHUNK_MESSAGE_BYTES`. The
    split depends only on the rows and ``chunk_size``, so planning twice gives the same
    chunks. No rows, no chunks: the caller goes straight to aggregation. More than
    :data:`MAX_JOB_CHUNKS` chunks is a :class:`ValidationError` (raise ``chunk_size``).
    """
    validate_id(job_id, "job_id")
    _check_positive(chunk_size, "chunk_size")
    if not all(isinstance(r, JobRow) for r in rows):
        raise ValidationError("rows must be JobRow values")
    if len({r.row for r in rows}) != len(rows):
        raise ValidationError("a job's rows must have distinct row numbers")
    groups = _pack(rows, chunk_size, _envelope_bytes(job_id))
    if len(groups) > MAX_JOB_CHUNKS:
        raise ValidationError(
            f"{len(groups)} chunks, more than the limit of {MAX_JOB_CHUNKS}: raise chunk_size"
        )
    return [
        JobChunk(job_id, index, len(groups), tuple(group)) for index, group in enumerate(groups)
    ]


def _pack(rows: Sequence[JobRow], chunk_size: int, envelope: int) -> list[list[JobRow]]:
    groups: list[list[JobRow]] = []
    current: list[JobRow] = []
    used = envelope
    for row in rows:
        cost = len(_compact(_row_wire(row))) + 1
        if current and (len(current) >= chunk_size or used + cost > MAX_CHUNK_MESSAGE_BYTES):
            groups.append(current)
            current, used = [], envelope
        current.append(row)
        used += cost
    if current:
        groups.append(current)
    return groups


def _envelope_bytes(job_id: str) -> int:
    """A message's size without rows, for the largest index and count it can carry."""
    doc = {
        "type": CHUNK_MESSAGE_TYPE,
        "version": MESSAGE_VERSION,
        "job_id": job_id,
        "index": MAX_JOB_CHUNKS,
        "count": MAX_JOB_CHUNKS,
        "rows": [],
    }
    return len(_compact(doc))


def _row_wire(row: JobRow) -> list[Any]:
    return [row.row, row.probe_key, row.gallery, row.mode, row.claimed_subject]


def _row_from_wire(value: Any) -> JobRow:
    if not isinstance(value, list) or len(value) != 5:
        raise ValidationError("job chunk rows must be [row, key, gallery, mode, subject] lists")
    row, key, gallery, mode, claimed = value
    return JobRow(row=row, probe_key=key, claimed_subject=claimed, gallery=gallery, mode=mode)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _typed_doc(body: Any, message_type: str) -> dict[str, Any] | None:
    if not isinstance(body, str) or message_type not in body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("type") == message_type else None


def _message_doc(body: Any, message_type: str) -> dict[str, Any]:
    doc = _typed_doc(body, message_type)
    if doc is None or doc.get("version") != MESSAGE_VERSION:
        raise ValidationError(f"not a {message_type} message of a known version")
    return doc


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------

_RANK = pa.struct(
    [
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
    ]
)


def results_schema() -> pa.Schema:
    """The one definition of a job's results, for chunk files and the final file alike.

    One row per manifest row. ``decision`` is ``match``/``no_match`` (verify),
    ``identified``/``not_identified`` (identify) or ``failed`` with ``reason``, an error
    code, and ``detail``. ``similarity`` is the best over the claimed subject's faces
    (verify) or the top-1 (identify); ``ranks`` is the identify top-k, ranked. The list's
    child is named ``element`` because Parquet's list convention renames it so: the schema
    read back equals this one.
    """
    return pa.schema(
        [
            pa.field("row", pa.int32(), nullable=False),
            pa.field("probe", pa.string(), nullable=False),
            pa.field("mode", pa.string(), nullable=False),
            pa.field("gallery", pa.string(), nullable=False),
            pa.field("claimed_subject", pa.string()),
            pa.field("decision", pa.string(), nullable=False),
            pa.field("similarity", pa.float32()),
            pa.field("threshold", pa.float32()),
            pa.field("best_subject", pa.string()),
            pa.field("ranks", pa.list_(pa.field("element", _RANK, nullable=False))),
            pa.field("reason", pa.string()),
            pa.field("detail", pa.string()),
        ]
    )


RESULT_COLUMNS: tuple[str, ...] = tuple(results_schema().names)


def build_results_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """A validated results table from one dict per row (missing nullable keys mean null).

    Refused (:class:`ValidationError`): unknown keys, wrong types, non-finite or
    out-of-range similarities, a decision that does not fit the mode, the similarity or the
    ranks, a failed row without a reason, a row number given twice. Records are kept in the
    given order; :func:`aggregate` sorts.
    """
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise ValidationError("records must be a list of dicts")
    checked = [_checked_record(position, r) for position, r in enumerate(records)]
    _refuse_duplicate_rows(np.array([r["row"] for r in checked], dtype=np.int64))
    schema = results_schema()
    columns = [
        pa.array([r[name] for r in checked], type=schema.field(name).type) for name in schema.names
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def verify_record(row: JobRow, similarity: float, threshold: float) -> dict[str, Any]:
    """The result of a verify row: ``match`` when ``similarity >= threshold``."""
    if row.mode != VERIFY:
        raise ValidationError(f"row {row.row} is an {row.mode} row, not a verify row")
    return {
        **_row_fields(row),
        "decision": "match" if similarity >= threshold else "no_match",
        "similarity": similarity,
        "threshold": threshold,
    }


def identify_record(
    row: JobRow, ranks: Sequence[tuple[str, float]], threshold: float
) -> dict[str, Any]:
    """The result of an identify row from its ranked ``(subject_id, similarity)`` top-k.

    ``identified`` when the top-1 clears the threshold, with it as ``best_subject``; the
    ranks are kept either way, so that a reviewer sees the near misses.
    """
    if row.mode != IDENTIFY:
        raise ValidationError(f"row {row.row} is a {row.mode} row, not an identify row")
    ranked = [{"subject_id": subject, "similarity": sim} for subject, sim in ranks]
    top = ranked[0] if ranked else None
    identified = top is not None and top["similarity"] >= threshold
    return {
        **_row_fields(row),
        "decision": "identified" if identified else "not_identified",
        "similarity": top["similarity"] if top else None,
        "threshold": threshold,
        "best_subject": top["subject_id"] if identified and top else None,
        "ranks": ranked,
    }


def failed_record(row: JobRow, error: FaceGateError) -> dict[str, Any]:
    """A row the worker could not process: the error's stable code is the ``reason``."""
    return {**_row_fields(row), "decision": FAILED, "reason": error.code, "detail": error.message}


def failure_records(failures: Iterable[RowFailure]) -> list[dict[str, Any]]:
    """The manifest's refused rows as result records, so that they appear in the results."""
    return [
        {
            "row": f.row,
            "probe": f.probe,
            "mode": f.mode,
            "gallery": f.gallery,
            "claimed_subject": f.claimed_subject,
            "decision": FAILED,
            "reason": f.reason_code,
            "detail": f.message,
        }
        for f in failures
    ]


def _row_fields(row: JobRow) -> dict[str, Any]:
    return {
        "row": row.row,
        "probe": row.probe_key,
        "mode": row.mode,
        "gallery": row.gallery,
        "claimed_subject": row.claimed_subject,
    }


def _checked_record(position: int, record: Any) -> dict[str, Any]:
    """All columns of one record, checked; errors name the record's row."""
    if not isinstance(record, Mapping):
        raise ValidationError(f"result record {position} is not a dict")
    unknown = sorted(str(k) for k in record if k not in RESULT_COLUMNS)
    if unknown:
        raise ValidationError(f"result record {position} has unknown keys {unknown}")
    values = {name: record.get(name) for name in RESULT_COLUMNS}
    try:
        _check_identity(values)
        _check_scores(values)
        _check_outcome(values)
    except ValidationError as exc:
        raise ValidationError(
            f"result record {position} (row {values['row']!r}): {exc.message}"
        ) from exc
    return values


def _check_identity(values: dict[str, Any]) -> None:
    if _check_index(values["row"], "row") > _INT32_MAX:
        raise ValidationError("row does not fit int32")
    if not isinstance(values["probe"], str):
        raise ValidationError("probe must be a string")
    if not values["probe"] and values["decision"] != FAILED:
        raise ValidationError("only a failed row (missing_probe) may have an empty probe")
    for name in ("mode", "gallery"):
        if not isinstance(values[name], str):
            raise ValidationError(f"{name} must be a string")
    for name in ("claimed_subject", "best_subject", "detail"):
        if values[name] is not None and not isinstance(values[name], str):
            raise ValidationError(f"{name} must be a string or None")
    if values["decision"] not in DECISIONS:
        raise ValidationError(f"decision must be one of {', '.join(DECISIONS)}")


def _check_scores(values: dict[str, Any]) -> None:
    values["similarity"] = _cosine(values["similarity"], "similarity", _COSINE_SLACK)
    values["threshold"] = _cosine(values["threshold"], "threshold", 0.0)
    if values["ranks"] is not None:
        values["ranks"] = _checked_ranks(values["ranks"])


def _cosine(value: Any, what: str, slack: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValidationError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not -1.0 - slack <= number <= 1.0 + slack:
        raise ValidationError(f"{what} must be a cosine similarity in [-1, 1], got {value!r}")
    return number


def _checked_ranks(ranks: Any) -> list[dict[str, Any]]:
    if isinstance(ranks, str | bytes | Mapping) or not isinstance(ranks, Sequence):
        raise ValidationError("ranks must be a list of {subject_id, similarity}")
    checked = []
    for entry in ranks:
        if not isinstance(entry, Mapping) or set(entry) != {"subject_id", "similarity"}:
            raise ValidationError("each rank must be {subject_id, similarity}")
        subject = entry["subject_id"]
        if not isinstance(subject, str) or not subject:
            raise ValidationError("a rank's subject_id must be a non-empty string")
        similarity = _cosine(entry["similarity"], "a rank's similarity", _COSINE_SLACK)
        checked.append({"subject_id": subject, "similarity": similarity})
    sims = [c["similarity"] for c in checked]
    if any(a < b for a, b in pairwise(sims)):
        raise ValidationError("ranks must be ordered by similarity, highest first")
    return checked


def _check_outcome(values: dict[str, Any]) -> None:
    decision = values["decision"]
    if decision == FAILED:
        if not isinstance(values["reason"], str) or not values["reason"]:
            raise ValidationError("a failed row needs a reason (an error code)")
        return
    if values["mode"] != _DECISION_MODE[decision]:
        raise ValidationError(f"decision {decision!r} does not fit mode {values['mode']!r}")
    if values["reason"] is not None:
        raise ValidationError("only failed rows have a reason")
    if values["threshold"] is None:
        raise ValidationError(f"a {decision!r} row needs its threshold")
    if values["mode"] == VERIFY:
        _check_verify(values)
    else:
        _check_identify(values)


def _check_verify(values: dict[str, Any]) -> None:
    if values["claimed_subject"] is None or values["similarity"] is None:
        raise ValidationError("a verify row needs claimed_subject and similarity")
    if values["ranks"] is not None or values["best_subject"] is not None:
        raise ValidationError("a verify row has no ranks and no best_subject")
    _check_side(values["decision"] == "match", values["similarity"], values["threshold"])


def _check_identify(values: dict[str, Any]) -> None:
    ranks = values["ranks"]
    if ranks is None:
        raise ValidationError("an identify row needs its ranks (an empty list if none)")
    top = ranks[0] if ranks else None
    if top is None:
        if values["similarity"] is not None or values["decision"] == "identified":
            raise ValidationError("with no ranks there is no similarity and no identification")
        return
    if values["similarity"] is None or abs(values["similarity"] - top["similarity"]) > 1e-6:
        raise ValidationError("an identify row's similarity is its top-1 similarity")
    identified = values["decision"] == "identified"
    best = top["subject_id"] if identified else None
    if values["best_subject"] != best:
        raise ValidationError(
            "best_subject is the top-1 subject when identified, else None",
            detail=f"expected {best!r}, got {values['best_subject']!r}",
        )
    _check_side(identified, top["similarity"], values["threshold"])


def _check_side(positive: bool, similarity: float, threshold: float) -> None:
    """A match must not sit clearly below the threshold, nor a miss clearly at or above it."""
    if positive and similarity < threshold - _DECISION_SLACK:
        raise ValidationError(f"similarity {similarity} is below threshold {threshold}")
    if not positive and similarity > threshold + _DECISION_SLACK:
        raise ValidationError(f"similarity {similarity} clears threshold {threshold}")


def _refuse_duplicate_rows(rows: np.ndarray) -> None:
    ordered = np.sort(rows)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if repeated.size:
        raise ValidationError(
            f"{repeated.size} row numbers appear more than once",
            detail=f"rows {repeated[:10].tolist()}",
        )


def results_to_parquet(table: pa.Table) -> bytes:
    """A results table as zstd Parquet bytes (for a chunk file or ``results.parquet``)."""
    _check_results_schema(table, "results table")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def results_from_parquet(data: bytes, what: str = "results file") -> pa.Table:
    """Read back :func:`results_to_parquet`; :class:`ValidationError` if it is anything else."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise ValidationError(f"{what} is not Parquet", detail=str(exc)) from exc
    return _check_results_schema(table, what)


def _check_results_schema(table: Any, what: str) -> pa.Table:
    if not isinstance(table, pa.Table):
        raise ValidationError(f"{what} is not an Arrow table")
    plain = table.replace_schema_metadata(None)
    if not plain.schema.equals(results_schema()):
        raise ValidationError(
            f"{what} does not have the results schema",
            detail=f"expected:\n{results_schema()}\ngot:\n{plain.schema}",
        )
    return plain


# --------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------


def aggregate(
    job_id: str,
    tables: Sequence[pa.Table],
    *,
    started_at: str | datetime,
    model_id: str,
    expected_rows: int | None = None,
    finished_at: str | datetime | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Merge chunk tables (and the manifest failures) into the results and their summary.

    Rows come out sorted by ``row``. A row in two tables is a :class:`ValidationError`:
    chunk files are overwritten by key, so a duplicate means a bug, and picking one would
    hide it. With ``expected_rows`` (the job's row count) the rows must be exactly
    ``0 .. expected_rows - 1``: a missing chunk file fails the job instead of shrinking it.
    Times are ISO-8601 UTC (or aware datetimes); ``finished_at`` defaults to now.
    """
    validate_id(job_id, "job_id")
    if not isinstance(model_id, str) or not model_id:
        raise ValidationError("model_id must be a non-empty string")
    start = _instant(started_at, "started_at")
    end = _instant(datetime.now(UTC) if finished_at is None else finished_at, "finished_at")
    if end < start:
        raise ValidationError("finished_at is before started_at")
    table = _concat(tables)
    rows = table["row"].to_numpy()
    _refuse_duplicate_rows(rows)
    table = table.sort_by("row").combine_chunks()
    if expected_rows is not None:
        _check_complete(table["row"].to_numpy(), expected_rows)
    summary = {
        "job_id": job_id,
        "rows": table.num_rows,
        **_tallies(table),
        "model_id": model_id,
        "started_at": _iso(start),
        "finished_at": _iso(end),
        "seconds": round((end - start).total_seconds(), 3),
    }
    return table, summary


def summary_json(summary: Mapping[str, Any]) -> bytes:
    """The bytes of ``summary.json``: stable key order, so reruns write identical layouts."""
    return (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _concat(tables: Sequence[pa.Table]) -> pa.Table:
    if isinstance(tables, pa.Table) or not isinstance(tables, Sequence):
        raise ValidationError("tables must be a list of results tables")
    checked = [_check_results_schema(t, f"table {i}") for i, t in enumerate(tables)]
    if not checked:
        return results_schema().empty_table()
    return pa.concat_tables(checked)


def _check_complete(rows: np.ndarray, expected_rows: int) -> None:
    """``rows`` sorted and distinct: exactly ``0 .. expected_rows - 1``, nothing lost."""
    _check_index(expected_rows, "expected_rows")
    if rows.size == expected_rows and (rows.size == 0 or rows[-1] == expected_rows - 1):
        return
    missing = np.setdiff1d(np.arange(expected_rows), rows)
    extra = rows[rows >= expected_rows]
    raise ValidationError(
        f"the job has {expected_rows} rows but the results hold {rows.size}",
        detail=f"missing rows {missing[:10].tolist()}, unexpected rows {extra[:10].tolist()}",
    )


def _tallies(table: pa.Table) -> dict[str, Any]:
    decisions = Counter(table["decision"].to_pylist())
    unknown = sorted(set(decisions) - set(DECISIONS))
    if unknown:
        raise ValidationError(f"results hold unknown decisions {unknown}")
    counts = {d: decisions.get(d, 0) for d in DECISIONS}
    reasons = Counter(
        reason or "unknown"
        for reason, decision in zip(
            table["reason"].to_pylist(), table["decision"].to_pylist(), strict=True
        )
        if decision == FAILED
    )
    return {
        "counts": counts,
        "match_rate": _rate(counts["match"], counts["match"] + counts["no_match"]),
        "identified_rate": _rate(
            counts["identified"], counts["identified"] + counts["not_identified"]
        ),
        "failures_by_reason": dict(sorted(reasons.items())),
    }


def _rate(part: int, whole: int) -> float | None:
    """None rather than 0 when nothing was decided: "no verify rows" is not "0 % matched"."""
    return part / whole if whole else None


def _instant(value: Any, what: str) -> datetime:
    """An aware UTC datetime; naive times are refused, they mean a different instant per host."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            text = str(value)
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError as exc:
            raise ValidationError(f"{what} must be ISO-8601", detail=repr(value)) from exc
    if parsed.utcoffset() is None:
        raise ValidationError(f"{what} must carry a time zone (UTC)", detail=repr(value))
    return parsed.astimezone(UTC)


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_now() -> str:
    return _iso(datetime.now(UTC))


# --------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobStatus:
    """What ``GET /jobs/{job_id}`` and ``facegate jobs watch`` show.

    ``status`` is ``running``, ``succeeded`` or ``failed`` (with ``reason``); ``rows``
    counts every manifest row and ``failed_rows`` those refused before any work. The result
    keys and ``counts`` (by decision) are set once the job succeeded.
    """

    job_id: str
    status: str
    rows: int
    chunks: int
    chunks_done: int
    failed_rows: int
    created_at: str
    updated_at: str
    results_key: str | None = None
    summary_key: str | None = None
    counts: dict[str, int] | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobStore:
    """Job status in the single table: one item per job, ``pk=JOB#<job_id>``, ``sk=META``.

    The items carry neither ``kind`` nor ``subject_id``, so they stay out of the ``subjects``
    index and out of every subject query. Every write is one conditional ``UpdateItem`` or
    ``PutItem``, so concurrent chunk workers never need a lock.
    """

    def __init__(self, client: BaseClient, table: str) -> None:
        self._db = client
        self.table = table

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        return cls(aws_client("dynamodb", settings), settings.table)

    @staticmethod
    def _key(job_id: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": _JOB_PK + validate_id(job_id, "job_id")}, "sk": {"S": _META_SK}}

    def create(self, job_id: str, rows: int, chunks: int, failed_rows: int) -> bool:
        """Register a running job; False if it already exists (a duplicate notification).

        ``rows`` is every manifest row, ``failed_rows`` those refused by the manifest, and
        ``chunks`` the chunk messages the valid rows went out in (0 only when none is valid).
        """
        _check_counts(rows, chunks, failed_rows)
        now = _utc_now()
        item = {
            **self._key(job_id),
            "job_id": {"S": job_id},
            "status": {"S": RUNNING},
            "rows": _num(rows),
            "chunks": _num(chunks),
            "failed_rows": _num(failed_rows),
            "created_at": {"S": now},
            "updated_at": {"S": now},
        }
        with _aws_errors(f"creating job {job_id}"):
            try:
                self._db.put_item(
                    TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                return False
        return True

    def chunk_done(self, job_id: str, index: int) -> tuple[int, int]:
        """Record that chunk ``index`` finished; return ``(chunks done, chunks in all)``.

        The index is added to a string set, so a retried chunk is counted once, and the
        update is atomic, so of two chunks finishing together exactly one sees the last
        count. A redelivered chunk after the last one sees ``done == total`` again: the
        aggregation it then requests rewrites the same results, so it costs time, not
        correctness. :class:`UnknownJobError`, or :class:`ValidationError` for an index
        outside the job's chunks.
        """
        _check_index(index, "chunk index")
        with _aws_errors(f"recording chunk {index} of job {job_id}"):
            try:
                done = self._db.update_item(
                    TableName=self.table,
                    Key=self._key(job_id),
                    UpdateExpression="ADD #done :index SET #updated = :now",
                    ConditionExpression="attribute_exists(pk) AND #chunks > :index_n",
                    ExpressionAttributeNames={
                        "#done": "done_chunks",
                        "#updated": "updated_at",
                        "#chunks": "chunks",
                    },
                    ExpressionAttributeValues={
                        ":index": {"SS": [str(index)]},
                        ":index_n": _num(index),
                        ":now": {"S": _utc_now()},
                    },
                    ReturnValues="ALL_NEW",
                )["Attributes"]
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                total = self.get(job_id).chunks
                raise ValidationError(
                    f"chunk index {index} out of range: job {job_id!r} has {total} chunks"
                ) from exc
        return len(done["done_chunks"]["SS"]), int(done["chunks"]["N"])

    def finish(
        self, job_id: str, summary_key: str, results_key: str, counts: Mapping[str, int]
    ) -> None:
        """Mark the job succeeded with where its results are and its counts by decision.

        Unconditional but for existence: a rerun of the aggregation wrote the same keys, and
        a success after an earlier failed attempt is the job's real outcome (its reason goes).
        """
        for value, what in ((summary_key, "summary_key"), (results_key, "results_key")):
            if not isinstance(value, str) or not value:
                raise ValidationError(f"{what} must be a non-empty key")
        self._update(
            job_id,
            "SET #status = :status, #summary = :summary, #results = :results, "
            "#counts = :counts, #updated = :now REMOVE #reason",
            {
                "#summary": "summary_key",
                "#results": "results_key",
                "#counts": "counts",
                "#reason": "reason",
            },
            {
                ":status": {"S": SUCCEEDED},
                ":summary": {"S": summary_key},
                ":results": {"S": results_key},
                ":counts": {"M": {k: _num(v) for k, v in _checked_counts(counts).items()}},
            },
        )

    def fail(self, job_id: str, reason: str) -> bool:
        """Mark the job failed; False, changing nothing, if it already succeeded.

        A late, failing duplicate (a redelivered aggregation) must not erase a success.
        ``reason`` is for people; it is cut to :data:`MAX_REASON_CHARS` characters.
        """
        if not isinstance(reason, str) or not reason:
            raise ValidationError("reason must be a non-empty string")
        try:
            self._update(
                job_id,
                "SET #status = :status, #reason = :reason, #updated = :now",
                {"#reason": "reason"},
                {
                    ":status": {"S": FAILED_STATUS},
                    ":reason": {"S": reason[:MAX_REASON_CHARS]},
                    ":succeeded": {"S": SUCCEEDED},
                },
                condition="#status <> :succeeded",
            )
        except _Refused:
            self.get(job_id)
            return False
        return True

    def _update(
        self,
        job_id: str,
        expression: str,
        names: dict[str, str],
        values: dict[str, Any],
        condition: str | None = None,
    ) -> None:
        """One update of an existing job: :class:`UnknownJobError` if there is none,
        :class:`_Refused` when the extra ``condition`` fails."""
        exists = "attribute_exists(pk)"
        with _aws_errors(f"updating job {job_id}"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=self._key(job_id),
                    UpdateExpression=expression,
                    ConditionExpression=f"{exists} AND ({condition})" if condition else exists,
                    ExpressionAttributeNames={
                        **names,
                        "#status": "status",
                        "#updated": "updated_at",
                    },
                    ExpressionAttributeValues={**values, ":now": {"S": _utc_now()}},
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                if condition is None:
                    raise UnknownJobError(f"unknown job {job_id!r}") from exc
                raise _Refused from exc

    def get(self, job_id: str) -> JobStatus:
        """The job's status, strongly consistent; :class:`UnknownJobError` if there is none."""
        with _aws_errors(f"reading job {job_id}"):
            item = self._db.get_item(
                TableName=self.table, Key=self._key(job_id), ConsistentRead=True
            ).get("Item")
        if item is None:
            raise UnknownJobError(f"unknown job {job_id!r}")
        return _status_from_item(item)


class _Refused(Exception):
    """A job update's own condition failed (as opposed to the job being unknown)."""


def _num(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _check_counts(rows: int, chunks: int, failed_rows: int) -> None:
    for value, what in ((rows, "rows"), (chunks, "chunks"), (failed_rows, "failed_rows")):
        _check_index(value, what)
    valid = rows - failed_rows
    if valid < 0:
        raise ValidationError(f"failed_rows {failed_rows} exceeds rows {rows}")
    if chunks > min(valid, MAX_JOB_CHUNKS) or (valid > 0) != (chunks > 0):
        raise ValidationError(
            f"{chunks} chunks cannot carry {valid} valid rows (1 to {MAX_JOB_CHUNKS} chunks "
            "when there are valid rows, else 0)"
        )


def _checked_counts(counts: Any) -> dict[str, int]:
    if not isinstance(counts, Mapping):
        raise ValidationError("counts must map decisions to numbers")
    for key, value in counts.items():
        if not isinstance(key, str) or not key:
            raise ValidationError("counts keys must be non-empty strings")
        _check_index(value, f"counts[{key!r}]")
    return dict(counts)


def _status_from_item(item: Mapping[str, Any]) -> JobStatus:
    def text(name: str) -> str | None:
        return item[name]["S"] if name in item else None

    counts = item.get("counts")
    return JobStatus(
        job_id=item["job_id"]["S"],
        status=item["status"]["S"],
        rows=int(item["rows"]["N"]),
        chunks=int(item["chunks"]["N"]),
        chunks_done=len(item.get("done_chunks", {}).get("SS", [])),
        failed_rows=int(item["failed_rows"]["N"]),
        created_at=item["created_at"]["S"],
        updated_at=item["updated_at"]["S"],
        results_key=text("results_key"),
        summary_key=text("summary_key"),
        counts={k: int(v["N"]) for k, v in counts["M"].items()} if counts else None,
        reason=text("reason"),
    )
