"""schemathesis hooks for ``make fuzz``: real face photos in the photo fields, most of the time.

Generated strings in an ``image...`` field are almost never an image, so without help every
photo request would stop at ``invalid_image`` and the pipeline, the stores and the answers
past it would go untested. Before each request, each photo value (a base64 string or an
``s3://`` URI in JSON, a file in a form; the items of a list too) is replaced, two times in
three, by one of the real test photos: base64 in JSON, the bytes in a form, and one time in
six an ``s3://`` URI of that photo under the stack's probes prefix. The choice is a hash of
the generated value, so a case replays and shrinks to the same request.

Loaded by schemathesis from ``SCHEMATHESIS_HOOKS``; ``bench/fuzz.py`` sets that and
``FACEGATE_FUZZ_PHOTOS`` (a folder of JPEGs) and ``FACEGATE_FUZZ_S3`` (``s3://bucket/prefix/``
under which the same file names are stored; empty: no ``s3://`` photos).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import schemathesis

# schemathesis runs its workers as threads, and Hypothesis describes strategies by parsing
# their lambdas' source (``ast.parse``). CPython 3.11 keeps the AST constructor's recursion
# counter in interpreter-wide state, so two threads converting trees at once corrupt it:
# "SystemError: AST constructor recursion depth mismatch", reported by schemathesis as a
# runtime error of whichever operation was being generated (POST /compare and its collection
# twin, the largest body schemas). One parse at a time; nothing sent to the API changes.
_PARSE = threading.Lock()
_ast_parse = ast.parse


def _serial_parse(*args: Any, **kwargs: Any) -> Any:
    with _PARSE:
        return _ast_parse(*args, **kwargs)


ast.parse = _serial_parse  # type: ignore[assignment]

PHOTOS = sorted(Path(os.environ["FACEGATE_FUZZ_PHOTOS"]).glob("*.jpg"))
S3_PREFIX = os.environ.get("FACEGATE_FUZZ_S3", "")
DATA = {path.name: path.read_bytes() for path in PHOTOS}
B64 = {name: base64.b64encode(data).decode() for name, data in DATA.items()}
NAMES = sorted(DATA)


def _digest(value: Any) -> bytes:
    return hashlib.sha256(repr(value).encode("utf-8", "surrogatepass")).digest()


def _photo(value: Any, form: bool) -> Any:
    """``value`` as generated (one time in three) or a real photo in its place."""
    digest = _digest(value)
    if digest[0] % 3 == 0:
        return value
    name = NAMES[digest[1] % len(NAMES)]
    if form:
        return DATA[name]
    if S3_PREFIX and digest[2] % 4 == 0:
        return S3_PREFIX + name
    return B64[name]


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if not NAMES or not isinstance(body, dict):
        return
    form = "multipart" in (case.media_type or "")
    for field, value in list(body.items()):
        if not isinstance(field, str) or not field.startswith("image"):
            continue
        if isinstance(value, list):
            body[field] = [_photo(item, form) for item in value]
        elif isinstance(value, str | bytes):
            body[field] = _photo(value, form)
