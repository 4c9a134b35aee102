"""Aggregation maths of a verification job: chunk tables -> results and a summary. Torch-free."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from facegate.batch.results import (
    DECISIONS,
    FAILED,
    _check_results_schema,
    _refuse_duplicate_rows,
    results_schema,
)
from facegate.common import check_index, iso_seconds, parse_instant, validate_id
from facegate.errors import ValidationError

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
    start = parse_instant(started_at, "started_at")
    end = parse_instant(datetime.now(UTC) if finished_at is None else finished_at, "finished_at")
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
        "started_at": iso_seconds(start),
        "finished_at": iso_seconds(end),
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
    check_index(expected_rows, "expected_rows")
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
    unknown = sorted(map(str, set(decisions) - set(DECISIONS)))
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
