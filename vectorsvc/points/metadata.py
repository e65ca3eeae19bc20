"""A point's client metadata: the key rule, which numbers it may hold, and the filter over it.

Metadata lives under the payload's `metadata` field; a filter names its keys and compares
them as the store does (64-bit integers, finite 64-bit floats).
"""

from __future__ import annotations

import math
import re
from typing import Any

from vectorsvc.errors import ValidationFailed
from vectorsvc.points.namespaces import METADATA_FIELD
from vectorsvc.vectorstore.base import Condition, Filter, MatchAny, MatchValue, Range

METADATA_KEY_RULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
# What the store holds as an integer (and compares in a filter): a signed 64-bit value.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def number_problem(value: int | float) -> str | None:
    """Why a JSON number cannot be stored or compared (None when it can): integers must
    fit in 64 bits, floats must be finite (`1e400` parses as an infinity)."""
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return None
        return "an integer outside the 64-bit range (-2**63 to 2**63-1); send it as a string"
    if math.isfinite(value):
        return None
    return "not a finite number"


_RANGE_OPS = ("gt", "gte", "lt", "lte")


def _check_filter_number(value: str | int, path: str) -> None:
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (problem := number_problem(value))
    ):
        raise ValidationFailed(f"{path}: {problem}", field=path, code="invalid_filter")


def _range_bound(bound: int | float, path: str) -> float:
    """A range bound as the store compares it: a finite 64-bit float."""
    try:
        value = float(bound)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ValidationFailed(
            f"{path}: range bounds must be finite numbers within the 64-bit float range "
            "(about ±1.8e308)",
            field=path,
            code="invalid_filter",
        )
    return value


def parse_metadata_filter(raw: dict[str, Any], *, field: str) -> Filter:
    """`{"lang": "en", "tag": {"any": ["a", "b"]}, "year": {"gte": 2000, "lt": 2010}}`:
    equality, any-of and numeric range on metadata keys, all of which must hold."""
    conditions: list[Condition] = []
    for key, spec in raw.items():
        path = f"{field}.{key}"
        if not METADATA_KEY_RULE.match(key):
            raise ValidationFailed(
                f"{path}: filter keys are metadata keys ({METADATA_KEY_RULE.pattern})",
                field=path,
                code="invalid_filter",
            )
        target = f"{METADATA_FIELD}.{key}"
        if isinstance(spec, str | bool | int) and not isinstance(spec, float):
            _check_filter_number(spec, path)
            conditions.append(MatchValue(key=target, value=spec))
        elif isinstance(spec, dict) and set(spec) == {"any"}:
            values = spec["any"]
            if (
                not isinstance(values, list)
                or not values
                or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values)
            ):
                raise ValidationFailed(
                    f"{path}.any: a non-empty list of strings or integers",
                    field=f"{path}.any",
                    code="invalid_filter",
                )
            for position, value in enumerate(values):
                _check_filter_number(value, f"{path}.any[{position}]")
            conditions.append(MatchAny(key=target, values=tuple(values)))
        elif isinstance(spec, dict) and spec and set(spec) <= set(_RANGE_OPS):
            bounds: dict[str, float] = {}
            for op, bound in spec.items():
                if isinstance(bound, bool) or not isinstance(bound, int | float):
                    raise ValidationFailed(
                        f"{path}.{op}: range bounds must be numbers",
                        field=f"{path}.{op}",
                        code="invalid_filter",
                    )
                bounds[op] = _range_bound(bound, f"{path}.{op}")
            conditions.append(Range(key=target, **bounds))
        else:
            raise ValidationFailed(
                f"{path}: use a value (string, integer, boolean) for equality, "
                '{"any": [...]} for any-of, or {"gt"|"gte"|"lt"|"lte": number} for a range',
                field=path,
                code="invalid_filter",
            )
    return Filter(must=tuple(conditions))
