"""DynamoDB attribute values, written and read in one way. Torch-free."""

from __future__ import annotations

from decimal import Decimal


def dynamo_number(value: float | int) -> dict[str, str]:
    """A DynamoDB number; via ``repr`` so that a float goes over the wire without rounding."""
    return {"N": str(Decimal(repr(value)))}
