"""Our backend-neutral `Filter` translated into a `qdrant_edge.Filter`."""

from __future__ import annotations

import numpy as np
import qdrant_edge as qe

from vectorsvc.vectorstore.base import Condition, Filter, HasIds, MatchAny, MatchValue, Range
from vectorsvc.vectorstore.filters import canonical_ids, split_any


def _match_value(value: str | int | bool) -> qe.MatchValue:
    if isinstance(value, bool):
        # qdrant-edge 0.9 extracts a Python bool as the integer 0/1 (bool subclasses int),
        # so MatchValue(True) silently matches payload 1, never true. numpy.bool_ is not an
        # int to its extractor and arrives as a real boolean (measured; see tests).
        return qe.MatchValue(np.bool_(value))  # type: ignore[arg-type]
    return qe.MatchValue(value)


def _condition(cond: Condition) -> qe.ConditionType:
    if isinstance(cond, MatchValue):
        return qe.FieldCondition(cond.key, match=_match_value(cond.value))
    if isinstance(cond, MatchAny):
        strings, integers = split_any(cond.values)
        if strings and integers:
            # Mixed kinds: OR of one keyword list and one integer list.
            return qe.Filter(
                should=[
                    qe.FieldCondition(cond.key, match=qe.MatchAny(strings)),
                    qe.FieldCondition(cond.key, match=qe.MatchAny(integers)),
                ]
            )
        values: list[str] | list[int] = integers if integers else strings
        return qe.FieldCondition(cond.key, match=qe.MatchAny(values))
    if isinstance(cond, Range):
        return qe.FieldCondition(
            cond.key, range=qe.RangeFloat(gte=cond.gte, gt=cond.gt, lte=cond.lte, lt=cond.lt)
        )
    if isinstance(cond, HasIds):
        return qe.HasIdCondition(set(canonical_ids(cond.ids)))
    raise TypeError(f"unsupported condition {cond!r}")


def to_edge_filter(flt: Filter) -> qe.Filter | None:
    """Our Filter -> `qdrant_edge.Filter`, or None for "everything"."""
    if not flt.must and not flt.must_not:
        return None
    return qe.Filter(
        must=[_condition(c) for c in flt.must],
        must_not=[_condition(c) for c in flt.must_not] or None,
    )
