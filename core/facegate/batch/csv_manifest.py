"""Manifest CSV files, whatever they list: bytes -> text -> rows under a header. Torch-free.

Both manifests users write go through here: the one beside or inside a zip photo set
(``path,subject_id``, :mod:`facegate.batch.archives`) and the one that starts a verification
job (``probe,gallery,mode``, :mod:`facegate.batch.manifest`). So both accept the same files
(UTF-8 with or without Excel's BOM, any column order and case, extra columns, blank lines)
and refuse the same ones with the same words: a UTF-16 file (Excel's "Unicode text") is
refused by name rather than read as mojibake.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from facegate.errors import ValidationError

#: 100 000 rows of long unicode paths stay well below this.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

#: UTF-32 first: its little-endian BOM starts with UTF-16's.
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


@dataclass(frozen=True)
class ManifestTable:
    """A manifest's data rows (blank lines dropped, cells as written) and where its columns are.

    ``columns`` maps each wanted column present in the header (lower case) to its index.
    """

    columns: dict[str, int]
    rows: list[list[str]]


def decode_manifest(data: str | bytes, what: str = "the manifest") -> str:
    """The manifest's text; :class:`ValidationError` if too large or not UTF-8 text."""
    if isinstance(data, bytes | bytearray):
        raw = bytes(data)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValidationError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
        for bom, name in _WIDE_BOMS:
            if raw.startswith(bom):
                raise ValidationError(f"{what} is {name} text: save it as CSV UTF-8")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{what} is not UTF-8 text") from exc
    if not isinstance(data, str):
        raise ValidationError(f"{what} must be text")
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValidationError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
    return data.removeprefix("\ufeff")


def read_manifest(
    data: str | bytes,
    *,
    required: Sequence[str],
    optional: Sequence[str] = (),
    max_rows: int,
    what: str = "the manifest",
) -> ManifestTable:
    """Parse a manifest whose header names ``required`` (and maybe ``optional``) columns.

    Refused as a whole (:class:`ValidationError`, the message naming ``what``): a file
    :func:`decode_manifest` refuses, malformed CSV, no header, a header without a required
    column or naming a wanted column twice, more than ``max_rows`` data rows.
    """
    try:
        lines = list(csv.reader(io.StringIO(decode_manifest(data, what)), strict=True))
    except csv.Error as exc:
        raise ValidationError(f"{what} is not valid CSV: {exc}") from exc
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        raise ValidationError(f"{what} is empty: it needs a header row")
    names = [cell.strip().lower() for cell in lines[0]]
    missing = [c for c in required if c not in names]
    if missing:
        optional_text = f" ({', '.join(optional)} optional)" if optional else ""
        raise ValidationError(
            f"{what}'s header lacks {', '.join(missing)}: it needs "
            f"{', '.join(required)} columns{optional_text}"
        )
    wanted = (*required, *optional)
    repeated = sorted(c for c in wanted if names.count(c) > 1)
    if repeated:
        raise ValidationError(f"{what}'s header repeats {', '.join(repeated)}")
    if len(lines) - 1 > max_rows:
        raise ValidationError(f"{what} has more than {max_rows} rows")
    return ManifestTable({c: names.index(c) for c in wanted if c in names}, lines[1:])
