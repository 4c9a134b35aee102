"""The rejects table: photos a batch job could not enrol, each with its error code.

Nothing is silently dropped: every photo of a batch is a gallery row or a reject row.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa

from facegate.errors import FaceGateError, ValidationError
from facegate.gallery.table import string_column


def rejects_schema() -> pa.Schema:
    """Rows a batch job could not enrol: ``reason`` is a :class:`FaceGateError` ``code``.

    Codes are stable, so rejects can be counted and retried by reason; ``detail`` carries the
    human-readable part and may be null.
    """
    return pa.schema(
        [
            pa.field("image_key", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("detail", pa.string(), nullable=True),
        ]
    )


def build_rejects_table(
    image_keys: Sequence[str],
    reasons: Sequence[str],
    details: Sequence[str | None] | None = None,
) -> pa.Table:
    """Columnar rejects: ``image_keys`` and ``reasons`` ``(N,)`` non-null, ``details`` nullable."""
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
    return pa.Table.from_arrays([keys, codes, detail_arr], schema=rejects_schema())


def rejects_from_errors(items: Iterable[tuple[str, FaceGateError]]) -> pa.Table:
    """Rejects from ``(image_key, error)`` pairs, as a batch job collects them."""
    keys: list[str] = []
    reasons: list[str] = []
    details: list[str | None] = []
    for key, error in items:
        keys.append(key)
        reasons.append(error.code)
        details.append(error.detail if error.detail is not None else error.message)
    return build_rejects_table(keys, reasons, details)
