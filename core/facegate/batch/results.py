"""The verification results table: schema, one record per manifest row, Parquet I/O. Torch-free."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.batch.manifest import _INT32_MAX, IDENTIFY, VERIFY, JobRow, RowFailure
from facegate.common import check_index
from facegate.errors import FaceGateError, ValidationError
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
else:
    pa = lazy_module("pyarrow")
    pq = lazy_module("pyarrow.parquet")

DECISIONS = ("match", "no_match", "identified", "not_identified", "failed")
FAILED = "failed"
_DECISION_MODE = {
    "match": VERIFY,
    "no_match": VERIFY,
    "identified": IDENTIFY,
    "not_identified": IDENTIFY,
}
#: Cosines of float32 unit vectors stray slightly past +-1; anything further is not a cosine.
_COSINE_SLACK = 1e-3
#: How far a similarity may sit on the wrong side of the threshold for its decision: rounding
#: to float32 on the way to a record must not turn a correct verdict into a refused table.
_DECISION_SLACK = 1e-6


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def _rank() -> pa.DataType:
    """One ranked candidate: a subject and its similarity."""
    return pa.struct(
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
    fields: list[pa.Field[Any]] = [
        pa.field("row", pa.int32(), nullable=False),
        pa.field("probe", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("gallery", pa.string(), nullable=False),
        pa.field("claimed_subject", pa.string()),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("similarity", pa.float32()),
        pa.field("threshold", pa.float32()),
        pa.field("best_subject", pa.string()),
        pa.field("ranks", pa.list_(pa.field("element", _rank(), nullable=False))),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
    return pa.schema(fields)


@lru_cache(maxsize=1)
def result_columns() -> tuple[str, ...]:
    """The results table's column names, in order."""
    return tuple(results_schema().names)


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
    top = ranks[0] if ranks else None
    identified = top is not None and top[1] >= threshold
    return {
        **_row_fields(row),
        "decision": "identified" if identified else "not_identified",
        "similarity": top[1] if top else None,
        "threshold": threshold,
        "best_subject": top[0] if identified and top else None,
        "ranks": [{"subject_id": subject, "similarity": sim} for subject, sim in ranks],
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
    unknown = sorted(str(k) for k in record if k not in result_columns())
    if unknown:
        raise ValidationError(f"result record {position} has unknown keys {unknown}")
    values = {name: record.get(name) for name in result_columns()}
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
    if check_index(values["row"], "row") > _INT32_MAX:
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
    checked: list[dict[str, Any]] = []
    sims: list[float] = []
    for entry in ranks:
        if not isinstance(entry, Mapping) or set(entry) != {"subject_id", "similarity"}:
            raise ValidationError("each rank must be {subject_id, similarity}")
        subject = entry["subject_id"]
        if not isinstance(subject, str) or not subject:
            raise ValidationError("a rank's subject_id must be a non-empty string")
        similarity = _cosine(entry["similarity"], "a rank's similarity", _COSINE_SLACK)
        if similarity is None:
            raise ValidationError("a rank's similarity must be a number, not null")
        checked.append({"subject_id": subject, "similarity": similarity})
        sims.append(similarity)
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
