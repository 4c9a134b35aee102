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
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


def validate_id(value: Any, what: str = "subject_id") -> str:
    """``value`` when it is a valid id (``ID_PATTERN``), else :class:`ValidationError`."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ValidationError(
            f"{what} must be 1-128 characters of letters, digits and _.@-", detail=repr(value)
        )
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
