"""The rejects table: photos a batch job could not enrol, each with its error code.

Nothing is silently dropped: every photo of a batch is a gallery row or a reject row.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from facegate.errors import FaceGateError, ValidationError
from facegate.gallery.table import source_column, source_time, string_column
from facegate.lazy import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")


def rejects_schema() -> pa.Schema:
    """Rows a batch job could not enrol: ``reason`` is a :class:`FaceGateError` ``code``.

    Codes are stable, so rejects can be counted and retried by reason; ``detail`` carries the
    human-readable part and may be null. ``subject_id`` is the person the photo was uploaded
    as, null when nothing said (an archive member no manifest row names), and ``source_at``
    its upload time, as in a gallery: an erasure removes the person's rejects too, and one
    written late from a photo that predates the erasure is dropped like a late gallery row.
    """
    fields: list[pa.Field[Any]] = [
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=True),
        pa.field("subject_id", pa.string(), nullable=True),
        pa.field("source_at", source_time(), nullable=True),
    ]
    return pa.schema(fields)


def build_rejects_table(
    image_keys: Sequence[str],
    reasons: Sequence[str],
    details: Sequence[str | None] | None = None,
    subject_ids: Sequence[str | None] | None = None,
    source_times: Sequence[str | datetime | None] | None = None,
) -> pa.Table:
    """Columnar rejects: ``image_keys`` and ``reasons`` ``(N,)`` non-null, ``details``,
    ``subject_ids`` and ``source_times`` nullable (all null when not given)."""
    keys = string_column(image_keys, "image_keys")
    n = len(keys)
    codes = string_column(reasons, "reasons", n)
    if not all(codes.to_pylist()):  # nulls were refused: a falsy code is ""
        raise ValidationError("reasons must be non-empty error codes")
    if details is None:
        detail_arr = pa.nulls(n, type=pa.string())
    else:
        try:
            detail_arr = pa.array(details, type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise ValidationError("details must be strings or None", detail=str(exc)) from exc
        if len(detail_arr) != n:
            raise ValidationError(f"details has {len(detail_arr)} rows, expected {n}")
    subjects = _nullable_strings(subject_ids, n, "subject_ids")
    times: pa.Array[Any] = pa.nulls(n, type=source_time())
    if source_times is not None:
        if len(source_times) != n:
            raise ValidationError(f"source_times has {len(source_times)} rows, expected {n}")
        known = {i: t for i, t in enumerate(source_times) if t is not None}
        given = source_column(list(known.values()), len(known)).to_pylist()
        values: list[datetime | None] = [None] * n
        for i, t in zip(known, given, strict=True):
            values[i] = t
        times = cast("pa.Array[Any]", pa.array(values, type=source_time()))
    return pa.Table.from_arrays([keys, codes, detail_arr, subjects, times], schema=rejects_schema())


def _nullable_strings(values: Sequence[str | None] | None, n: int, what: str) -> pa.Array[Any]:
    if values is None:
        return pa.nulls(n, type=pa.string())
    try:
        arr = pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise ValidationError(f"{what} must be strings or None", detail=str(exc)) from exc
    if len(arr) != n:
        raise ValidationError(f"{what} has {len(arr)} rows, expected {n}")
    return arr


Reject = tuple[str, FaceGateError] | tuple[str, FaceGateError, str | None, str | None]


def rejects_from_errors(items: Iterable[Reject]) -> pa.Table:
    """Rejects from ``(image_key, error)`` pairs, as a batch job collects them, or
    ``(image_key, error, subject_id, source_at)`` when it knows whose photo it was."""
    keys: list[str] = []
    reasons: list[str] = []
    details: list[str | None] = []
    subjects: list[str | None] = []
    times: list[str | None] = []
    for item in items:
        key, error = item[0], item[1]
        keys.append(key)
        reasons.append(error.code)
        details.append(error.detail if error.detail is not None else error.message)
        subjects.append(item[2] if len(item) == 4 else None)
        times.append(item[3] if len(item) == 4 else None)
    return build_rejects_table(keys, reasons, details, subjects, times)
