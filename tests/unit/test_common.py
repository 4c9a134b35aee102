"""The checks every layer shares: which ids are valid, and how caller JSON is parsed.

An id becomes one S3 key segment and part of a DynamoDB key, so a forged one must be refused
wherever it enters (``"alice\\n"``, ``..``, an id a shell or a URL would read as something
else); caller JSON must be refused as a validation error however deeply it nests.
"""

from __future__ import annotations

import json

import pytest

from facegate import common
from facegate.common import ID_PATTERN, validate_id
from facegate.errors import ValidationError
from facegate.storage.keys import job_id_from_manifest_key

VALID = ["alice", "person_a", "alice@example.com", "A-z_0.9@" * 16, "_x", "a..b", "7", "x-"]
INVALID = [
    "alice\n",  # ``$`` matches before a final newline
    "alice\r",
    ".",
    "..",
    ".hidden",
    "-rf",  # read as an option by a CLI
    "@home",
    "",
    "x" * 129,
    "a/b",
    "a b",
    "é",
]


@pytest.mark.parametrize("value", VALID)
def test_valid_ids_are_kept(value):
    assert validate_id(value) == value


@pytest.mark.parametrize("value", INVALID, ids=repr)
def test_forged_ids_are_refused(value):
    with pytest.raises(ValidationError, match="subject_id must"):
        validate_id(value)


@pytest.mark.parametrize("value", INVALID, ids=repr)
def test_the_pattern_refuses_them_with_match_too(value):
    """``keys.job_id_from_manifest_key`` uses ``ID_PATTERN.match``: the pattern itself must
    be anchored at the end, not only ``validate_id``."""
    assert ID_PATTERN.match(value) is None
    assert job_id_from_manifest_key(f"jobs/{value}/manifest.csv") is None


def test_non_strings_are_refused():
    for value in (None, 7, b"alice", ["alice"]):
        with pytest.raises(ValidationError):
            validate_id(value)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_within_the_depth_limit_is_parsed():
    assert common.parse_json('{"a": [1, {"b": "c"}]}', "body") == {"a": [1, {"b": "c"}]}
    assert common.parse_json(b"[1.5]", "body") == [1.5]
    nested = common.parse_json(_nested(common.MAX_JSON_DEPTH), "body")
    assert json.dumps(nested) == _nested(common.MAX_JSON_DEPTH)


@pytest.mark.parametrize(
    "text",
    [
        _nested(100),  # well within Python's recursion limit, over ours
        _nested(100_000),  # RecursionError inside json.loads
        '{"a":' * 50_000 + "1" + "}" * 50_000,
    ],
    ids=["over-limit", "recursion-list", "recursion-object"],
)
def test_deep_json_is_a_validation_error(text):
    with pytest.raises(ValidationError, match="body nests deeper than"):
        common.parse_json(text, "body")


@pytest.mark.parametrize("text", ["{", "", "\xff", b"\xff\xfe", "NaN", "[Infinity]", "[-Infinity]"])
def test_malformed_json_is_a_validation_error(text):
    """``NaN`` and ``Infinity`` are not JSON (RFC 8259), though Python's parser reads them."""
    with pytest.raises(ValidationError, match="body is not valid JSON"):
        common.parse_json(text, "body")
