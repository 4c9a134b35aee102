"""DynamoDB attribute values, written and read in one way: boto3's type (de)serializer. Torch-free.

The stores hand plain Python values to :func:`to_attributes` (items, keys and expression
attribute values alike) and read items back through :func:`from_attributes`, so no store
spells ``{"S": ...}`` or ``{"N": ...}`` by hand. The mapping is boto3's
(:class:`~boto3.dynamodb.types.TypeSerializer`): ``str`` -> ``S``, ``int``/``float`` -> ``N``,
``bytes`` -> ``B``, ``bool`` -> ``BOOL``, a set of strings -> ``SS``, a list or tuple -> ``L``,
a mapping -> ``M``.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, DecimalException
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from facegate.errors import ValidationError

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()
_DAY_SECONDS = 86_400

#: The subjects table's TTL attribute (``TimeToLiveSpecification`` in template.yaml): epoch
#: seconds after which DynamoDB deletes the item, usually within a few days. Written on
#: ingest ledger entries, jobs and tombstones; never on subjects or faces.
TTL_ATTRIBUTE = "expires_at"


def expires_at(days: int | None, now: float) -> int | None:
    """The TTL of an item kept ``days`` after ``now`` (epoch seconds); None: never expires.

    Whole seconds: DynamoDB's TTL reads a number of seconds, and an integer is what every
    reader of the item sees.
    """
    return None if days is None else int(now) + days * _DAY_SECONDS


def to_attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values -> DynamoDB attribute values, name by name.

    A ``None`` value is left out (an absent attribute, never ``NULL``), so optional fields are
    simply passed as None. Floats go through ``Decimal(repr(x))``: ``repr`` is the shortest
    text that reads back as the same float, so a number crosses the wire without rounding
    (``Decimal(x)`` would write the binary expansion's 50-odd digits instead). A value
    DynamoDB cannot hold (NaN, infinity, an empty set, more than 38 digits, a magnitude
    outside 1E-130..1E+126) is a :class:`ValidationError`, before any request is sent.
    """
    try:
        return {
            name: _SERIALIZER.serialize(_exact(value))
            for name, value in values.items()
            if value is not None
        }
    except (TypeError, DecimalException) as exc:
        raise ValidationError(f"not storable in DynamoDB: {exc}") from exc


def from_attributes(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item (or key, or ``Attributes``) -> plain values.

    Numbers come back as :class:`~decimal.Decimal` (the caller says ``int`` or ``float``),
    binary as ``bytes``, string sets as ``set[str]``, lists and maps as lists and dicts.
    """
    return {name: _decode(value) for name, value in item.items()}


def _exact(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list | tuple):
        return [_exact(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, set | frozenset) and not value:
        raise TypeError("DynamoDB holds no empty sets: leave the attribute out")
    return value


def _decode(value: Mapping[str, Any]) -> Any:
    """boto3's deserializer, except that binary stays ``bytes`` where it would wrap it in its
    ``Binary`` class (down lists and maps too)."""
    if "B" in value:
        return bytes(value["B"])
    if "L" in value:
        return [_decode(v) for v in value["L"]]
    if "M" in value:
        return {k: _decode(v) for k, v in value["M"].items()}
    return _DESERIALIZER.deserialize(value)  # type: ignore[arg-type]
