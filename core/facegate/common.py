"""Checks and encodings every layer shares: ids, counts, compact JSON and UTC timestamps.

Torch-free and I/O-free. Ids become S3 key segments and DynamoDB keys, so one pattern decides
what an id may be everywhere; timestamps are ISO-8601 UTC strings because they are compared
as text in DynamoDB conditions and sorted as text in listings.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from facegate.errors import ValidationError

#: Subject, gallery, part and job ids: safe as one S3 key segment and in a DynamoDB key.
#: Anchored with ``\Z``, not ``$`` (which also matches before a final newline), so that
#: ``ID_PATTERN.match`` is as strict as :func:`validate_id`.
ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}\Z")
#: Caller JSON nests no deeper than this; FaceGate's own bodies and cursors nest two levels.
MAX_JSON_DEPTH = 32


def validate_id(value: Any, what: str = "subject_id") -> str:
    """``value`` when it is a valid id (``ID_PATTERN``), else :class:`ValidationError`.

    The rule: 1-128 ASCII letters, digits and ``_ . @ -``, the first a letter, a digit or
    ``_``. Ids become S3 key segments and path segments, so ``.`` and ``..`` (and every id
    starting with a dot) are refused, and so are ids a CLI would read as an option
    (``-rf``) or a resolver as a handle (``@home``); e-mail-like ids (``alice@example.com``)
    stay valid. The whole string must match: ``"alice\\n"`` is refused.
    """
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ValidationError(
            f"{what} must be 1-128 characters of letters, digits and _.@-, "
            "starting with a letter, a digit or _",
            detail=repr(value),
        )
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes, what: str) -> Any:
    """Caller JSON (a request body, a listing cursor), refused as :class:`ValidationError`
    unless it is strict JSON nesting at most :data:`MAX_JSON_DEPTH` levels.

    Python's parser recurses per level: nesting past the interpreter's recursion limit
    raises ``RecursionError``, which no caller expects, and nesting under it would reach
    code that recurses again. ``NaN`` and ``Infinity`` are refused too: they are not JSON
    (RFC 8259), though Python reads them.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ValidationError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, NaN/Infinity
        raise ValidationError(f"{what} is not valid JSON") from exc
    level: list[Any] = [value]
    for _ in range(MAX_JSON_DEPTH):
        level = [
            child
            for node in level
            if isinstance(node, (dict, list))
            for child in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return value
    if any(isinstance(node, (dict, list)) for node in level):
        raise ValidationError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def check_index(value: Any, what: str) -> int:
    """A non-negative ``int`` (``bool`` refused: ``True`` is not an index)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{what} must be a non-negative int, got {value!r}")
    return value


def check_positive(value: Any, what: str) -> int:
    """A positive ``int`` (``bool`` refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{what} must be a positive int, got {value!r}")
    return value


def compact_json(value: Any) -> str:
    """ASCII JSON without spaces: the form whose length is a message's size on the wire."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def parse_instant(value: Any, what: str) -> datetime:
    """An aware UTC datetime; naive times are refused because they order differently per host."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            text = str(value)
            text = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValidationError(
                f"{what} must be an ISO-8601 timestamp", detail=repr(value)
            ) from exc
    if parsed.utcoffset() is None:
        raise ValidationError(f"{what} must carry a time zone (UTC)", detail=repr(value))
    return parsed.astimezone(UTC)


def iso_seconds(instant: datetime | float) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` of a datetime or of epoch seconds."""
    if not isinstance(instant, datetime):
        instant = datetime.fromtimestamp(instant, UTC)
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_micros(instant: datetime) -> str:
    """Microsecond precision: a deletion truncated to the second could sort before a part
    written in that same second before it, and let the deleted rows survive."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    """Now, as :func:`iso_seconds`."""
    return iso_seconds(datetime.now(UTC))
